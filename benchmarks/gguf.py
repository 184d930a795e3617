"""Decode and prefill of the engine beside llama.cpp on the same GGUF files, in one run.

A random TinyLlama-shaped bf16 checkpoint (benchmarks/decode.py's writer) goes through llama.cpp's
own converter (F16) and quantizer (Q4_0, Q8_0, Q4_K_M); the engine (`--quant file`: the file's
own blocks; with --reference also dequantized, `--quant none`) and llama.cpp (llama-cpp-python)
then read the very same files. Both run 2 threads (LOOPCHAT_THREADS=2; n_threads =
n_threads_batch = 2). The engine's activations are float32 unless --dtype says otherwise: on a
CPU without AVX512-BF16/AMX torch's bfloat16 GEMM (what 'auto' picks, used by the prefill) is
~100x slower than its float32 one. Every measurement is a fresh process, engine and llama.cpp
alternating, the table shows the median of --repeat runs: greedy decode tok/s after a prompt of
16 and of 512 tokens, and the time to prefill the 512. Then "where the time goes": one engine
decode step split into the weight products, the output head, attention and the rest (timed
around the model's modules in a child).

`--shape 7b` writes a Llama-2-7B-shaped Q4_K_M file without any conversion (random valid Q4_K /
Q6_K blocks in llama.cpp's Q4_K_M mix, F32 norms, a 512-piece vocabulary padded to 32000) and
reports the engine's first (page cache evicted) and second open, peak RSS and decode, beside
llama.cpp on the same file.

    python benchmarks/gguf.py --llama-python /tmp/lcpp/bin/python \
        --llama-cpp llama_cpp_python-0.3.36/vendor/llama.cpp [--types F16 Q4_0 Q8_0 Q4_K_M]
        [--tokens 40] [--repeat 3] [--dtype float32] [--reference] [--keep DIR]
    python benchmarks/gguf.py --shape 7b --llama-python /tmp/lcpp/bin/python [--keep DIR]

--llama-python is a Python with llama-cpp-python (built with CMAKE_ARGS=-DGGML_NATIVE=ON);
--llama-cpp is a llama.cpp source tree (or llama-cpp-python's sdist, which carries one in
vendor/llama.cpp) for convert_hf_to_gguf.py and its gguf-py. --keep DIR keeps (and reuses) the
checkpoint and GGUF files there.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and its name would hide the
# `gguf` package (llama.cpp's gguf-py, which the 7B writer uses): keep the repository root.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

THREADS = 2
CONTEXTS = (16, 512)
FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}
"""llama.cpp's llama_ftype for each quantization (F16 comes from the converter)."""
SHAPE_7B = dict(dim=4096, layers=32, heads=32, kv_heads=32, hidden=11008, vocab=32000)
FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512", "amx")
"""CPU flags that matter to these kernels (prefixes: avx512f, avx512_bf16, amx_tile...)."""


# ---------------------------------------------------------------------------------------------
# Helpers shared by the parent and the children (standard library only: the llama.cpp child runs
# in another Python, without torch).


def prompt(n: int) -> list[int]:
    """benchmarks/decode.py's prompt: BOS, then ids inside the 512-piece tokenizer."""
    return [1] + [3 + (i * 7919) % 500 for i in range(n - 1)]


def peak_rss_bytes() -> int:
    """VmHWM of this process (see benchmarks/decode.py: ru_maxrss carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_line() -> str:
    """The CPU's model name, the flags that matter, and the cores the OS shows."""
    name, flags = "unknown CPU", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(FLAGS)]
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs; {' '.join(flags) or 'no AVX2'})"


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"


# ---------------------------------------------------------------------------------------------
# Children.


def child_engine(args: argparse.Namespace) -> dict:
    """The engine on one file: load, then decode after each context (benchmarks/decode.py)."""
    from benchmarks.decode import measure_engine

    contexts = [int(c) for c in args.contexts.split(",")]
    out = measure_engine(args.file, args.dtype, args.quant, args.tokens, contexts)
    out["decode_at"] = {n: out[f"decode_{n}"] for n in contexts}
    return out


def child_llama(args: argparse.Namespace) -> dict:
    """llama.cpp on one file: eval the prompt (prefill), then greedy single-token evals (decode),
    timed as the engine times them: (tokens - 1) steps after the first token."""
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    contexts = [int(c) for c in args.contexts.split(",")]
    t0 = time.perf_counter()
    llm = Llama(
        model_path=args.file,
        n_ctx=max(contexts) + args.tokens + 8,
        n_batch=512,
        n_ubatch=512,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
    )
    out: dict = {"load_s": time.perf_counter() - t0, "load_rss": peak_rss_bytes()}
    vocab = llm.n_vocab()

    def greedy() -> int:  # the last position's logits (eval keeps only those)
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(vocab,))))

    for n in contexts:
        llm.reset()  # n_tokens = 0: the next eval drops the cache past it
        t = time.perf_counter()
        llm.eval(prompt(n))
        token = greedy()
        first = time.perf_counter()
        for _ in range(args.tokens - 1):
            llm.eval([token])
            token = greedy()
        done = time.perf_counter()
        out[f"prefill_{n}"] = first - t
        out[f"decode_{n}"] = (args.tokens - 1) / (done - first)
    out["peak_rss"] = peak_rss_bytes()
    out["kernel"] = f"llama.cpp@{THREADS}"
    return out


def child_profile(args: argparse.Namespace) -> dict:
    """Per decode step: time in the layers' weight products, attention (rotary, cache, the loop),
    the output head and the rest (norms, SwiGLU, residuals, embedding, sampling, Python).

    With the compiled blocks (engine/kernels/gguf_step.py) the C code counts its own nanoseconds
    per part (`CompiledGGUFBlock.spent`); otherwise the products are timed where the model calls
    them (each block's `project` and its `wo` / `w2`) and attention around its module."""
    import ctypes

    import torch

    from engine.generation.generate import Generator
    from engine.generation.sampling import SamplingParams
    from engine.kernels.gguf_step import CompiledGGUFBlock
    from engine.loading.loader import load_model

    contexts = [int(c) for c in args.contexts.split(",")]
    loaded = load_model(
        args.file, dtype=args.dtype, device="cpu", max_context=max(contexts) + args.tokens + 8,
        quant=args.quant,
    )  # fmt: skip
    model = loaded.model
    spent = {"attention_products": 0.0, "ffn_products": 0.0, "head": 0.0, "attention": 0.0}
    active = [False]
    compiled = [layer for layer in model.layers if isinstance(layer, CompiledGGUFBlock)]
    counters = [(ctypes.c_longlong * 3)() for _ in compiled]
    for layer, counter in zip(compiled, counters, strict=True):
        layer.spent = counter

    def timed_call(fn, key: str):
        def call(*a, **k):
            if not active[0]:
                return fn(*a, **k)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t

        return call

    def hook_module(module: torch.nn.Module, key: str) -> None:
        module.forward = timed_call(module.forward, key)

    for layer in model.layers:
        attention, ffn = layer.attention, layer.feed_forward
        attention.project = timed_call(attention.project, "attention_products")
        hook_module(attention.wo, "attention_products")
        ffn.project = timed_call(ffn.project, "ffn_products")
        hook_module(ffn.w2, "ffn_products")
        hook_module(attention, "attention")  # includes its products: subtracted below
    hook_module(model.output, "head")

    greedy = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    gen = Generator(loaded)
    out: dict = {"threads": torch.get_num_threads(), "compiled_blocks": bool(compiled)}
    for n in contexts:
        active[0] = False
        for key in spent:
            spent[key] = 0.0
        generation = gen.generate(prompt(n), greedy, max_new_tokens=args.tokens, reuse_cache=False)
        steps, started = 0, 0.0
        for _ in generation:
            steps += 1
            if steps == 1:  # the first token comes from the prefill: time the steps after it
                active[0] = True
                for counter in counters:
                    counter[:] = [0, 0, 0]
                started = time.perf_counter()
        total = time.perf_counter() - started
        active[0] = False
        per = 1000 / max(steps - 1, 1)
        in_c = [sum(c[i] for c in counters) / 1e9 for i in range(3)]
        products = spent["attention_products"] + spent["ffn_products"] + in_c[0]
        attention_only = spent["attention"] - spent["attention_products"] + in_c[1]
        out[str(n)] = {
            "step_ms": total * per,
            "products_ms": products * per,
            "head_ms": spent["head"] * per,
            "attention_ms": attention_only * per,
            "rest_ms": (total - products - spent["head"] - attention_only) * per,
            "rest_in_blocks_ms": in_c[2] * per,
        }
    return out


def child(args: argparse.Namespace) -> None:
    if args.child == "engine":
        result = child_engine(args)
    elif args.child == "llama":
        result = child_llama(args)
    elif args.child == "profile":
        result = child_profile(args)
    elif args.child == "quantize":
        result = child_quantize(args)
    else:
        result = child_write_7b(args)
    print(json.dumps(result))


def child_quantize(args: argparse.Namespace) -> dict:
    """llama.cpp's own quantizer (llama_model_quantize), as `llama-quantize F16 OUT TYPE`."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[args.quant]
    params.nthread = THREADS
    rc = llama_cpp.llama_model_quantize(args.file.encode(), args.out.encode(), ctypes.byref(params))
    if rc:
        raise SystemExit(f"llama_model_quantize {args.quant} failed ({rc})")
    return {"rc": rc}


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's rule for which layers' attn_v / ffn_down get Q6_K in a Q4_K_M file."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def child_write_7b(args: argparse.Namespace) -> dict:
    """A Llama-2-7B-shaped Q4_K_M file, streamed tensor by tensor with gguf.GGUFWriter: random
    valid Q4_K / Q6_K blocks (tests/fixtures/gguf_files.py), F32 norms, the test tokenizer's 512
    pieces padded to 32000. The head's EOS row is zero, so greedy decoding never stops early."""
    import gguf
    import numpy as np
    import sentencepiece as spm

    from tests.fixtures.gguf_files import K_BLOCK_BYTES, mostly, random_k_blocks
    from tests.fixtures.tokenizer import train_tokenizer

    s = SHAPE_7B
    d, f, layers, vocab = s["dim"], s["hidden"], s["layers"], s["vocab"]
    kv = s["kv_heads"] * d // s["heads"]
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, d)}
    for i in range(layers):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (d,),
            p + "attn_q.weight": (d, d),
            p + "attn_k.weight": (kv, d),
            p + "attn_v.weight": (kv, d),
            p + "attn_output.weight": (d, d),
            p + "ffn_norm.weight": (d,),
            p + "ffn_gate.weight": (f, d),
            p + "ffn_up.weight": (f, d),
            p + "ffn_down.weight": (d, f),
        }
    shapes |= {"output_norm.weight": (d,), "output.weight": (vocab, d)}

    def kind(name: str) -> str:
        layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
        more = use_more_bits(layer, layers)
        return mostly("Q4_K", v_and_down="Q6_K" if more else "Q4_K")(name)

    out = Path(args.out)
    tmp = out.with_suffix(".part")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("llama-2-7b-shaped")
    writer.add_context_length(4096)
    writer.add_embedding_length(d)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(f)
    writer.add_head_count(s["heads"])
    writer.add_head_count_kv(s["kv_heads"])
    writer.add_rope_dimension_count(d // s["heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(15)  # MOSTLY_Q4_K_M

    with tempfile.TemporaryDirectory() as folder:
        sp = spm.SentencePieceProcessor(model_file=str(train_tokenizer(Path(folder))))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode())
        scores.append(sp.get_score(i))
        types.append(
            2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
        )
    for i in range(sp.vocab_size(), vocab):  # as llama.cpp's converter pads a short vocabulary
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(4)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), shape[0] * 4)
        else:
            k = kind(name)
            rows, cols = shape
            nbytes = rows * cols // 256 * K_BLOCK_BYTES[k]
            writer.add_tensor_info(
                name, (rows, nbytes // rows), np.dtype(np.uint8), nbytes,
                raw_dtype=gguf.GGMLQuantizationType[k],
            )  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, (name, shape) in enumerate(shapes.items()):
        if len(shape) == 1:
            writer.write_tensor_data(np.ones(shape, dtype=np.float32))
            continue
        blocks = random_k_blocks(kind(name), shape[0], shape[1], seed=index)
        if name == "output.weight":
            blocks[2] = 0  # EOS's logit is 0; the largest of 31999 random ones is above it
        writer.write_tensor_data(blocks)
        del blocks
    writer.close()
    tmp.rename(out)
    return {"bytes": out.stat().st_size}


# ---------------------------------------------------------------------------------------------
# The parent.


class Phases:
    """Wall time of each phase of the run (printed at the end)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        phases = self

        class Timer:
            def __enter__(self) -> None:
                print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
                self.t = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                phases.times[name] = phases.times.get(name, 0.0) + time.perf_counter() - self.t

        return Timer()

    def table(self) -> None:
        print("\n| phase | s |\n|---|---|")
        for name, seconds in self.times.items():
            print(f"| {name} | {seconds:.0f} |")


def run_child(python: str, kind: str, file: Path, *extra: str, env: dict | None = None) -> dict:
    command = [python, str(Path(__file__).resolve()), "--child", kind, "--file", str(file)]
    environment = dict(os.environ, PYTHONPATH=str(ROOT), LOOPCHAT_THREADS=str(THREADS))
    environment |= env or {}
    proc = subprocess.run(
        [*command, *extra], capture_output=True, text=True, env=environment, check=False
    )
    if proc.returncode:
        raise SystemExit(f"{kind} {file.name} {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llama_cpp_tree(path: Path) -> Path:
    """llama.cpp's source tree: the path itself, or an sdist's vendor/llama.cpp."""
    for tree in (path, path / "vendor" / "llama.cpp"):
        if (tree / "convert_hf_to_gguf.py").is_file():
            return tree
    raise SystemExit(f"{path}: no convert_hf_to_gguf.py here or in vendor/llama.cpp")


def make_files(args: argparse.Namespace, work: Path, phases: Phases) -> dict[str, Path]:
    """The checkpoint, llama.cpp's F16 conversion of it, and its quantizations (kept if there)."""
    from benchmarks.decode import write_checkpoint

    files = {t: work / f"tinyllama-shaped-{t}.gguf" for t in args.types}
    checkpoint = args.checkpoint or work / "hf"
    f16 = work / "tinyllama-shaped-F16.gguf"
    if not f16.is_file():
        if args.llama_cpp is None:
            raise SystemExit(f"{f16} is not there: --llama-cpp is needed to make it")
        if not (checkpoint / "model.safetensors").is_file():
            with phases("write the bf16 checkpoint (benchmarks/decode.py)"):
                write_checkpoint(checkpoint)
        tree = llama_cpp_tree(args.llama_cpp)
        with phases("convert to F16 (convert_hf_to_gguf.py)"):
            env = dict(os.environ, PYTHONPATH=str(tree / "gguf-py"))
            command = [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(checkpoint)]
            command += ["--outtype", "f16", "--outfile", str(f16.with_suffix(".part"))]
            proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if proc.returncode:
                raise SystemExit(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
            f16.with_suffix(".part").rename(f16)
    for kind, path in files.items():
        if kind != "F16" and not path.is_file():
            with phases(f"quantize {kind} (llama_model_quantize)"):
                part = path.with_suffix(".part")
                run_child(args.llama_python, "quantize", f16, "--quant", kind, "--out", str(part))
                part.rename(path)
    return files


def _median(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def tinyllama(args: argparse.Namespace, work: Path, phases: Phases) -> None:
    files = make_files(args, work, phases)
    contexts = ",".join(str(c) for c in CONTEXTS)
    common = ["--tokens", str(args.tokens), "--contexts", contexts]
    engine = [sys.executable, "engine"]
    configs = [(t, "llama.cpp", "file") for t in args.types]
    configs += [(t, "engine", "file") for t in args.types]
    if args.reference:
        configs += [(t, "engine", "none") for t in args.types]
    runs: dict[tuple[str, str, str], list[dict]] = {c: [] for c in configs}
    with phases(f"measure ({len(configs)} configurations x {args.repeat})"):
        for attempt in range(args.repeat):
            for kind in args.types:  # alternating: a burst of background load hits all alike
                for config in [c for c in configs if c[0] == kind]:
                    _, system, quant = config
                    print(
                        f"  {kind} {system} {quant} ({attempt + 1}/{args.repeat}) [{load_line()}]",
                        file=sys.stderr,
                        flush=True,
                    )
                    if system == "llama.cpp":
                        r = run_child(args.llama_python, "llama", files[kind], *common)
                    else:
                        dtype = args.dtype if quant == "file" else args.reference_dtype
                        r = run_child(
                            engine[0], "engine", files[kind], *common,
                            "--quant", quant, "--dtype", dtype,
                        )  # fmt: skip
                    runs[config].append(r)
                    keys = [
                        k
                        for k, v in r.items()
                        if k.startswith(("decode_", "prefill_")) and isinstance(v, (int, float))
                    ]
                    numbers = ", ".join(f"{k} {r[k]:.2f}" for k in keys)
                    print(f"    {numbers} [{load_line()}]", file=sys.stderr, flush=True)
    rows = {c: _median(r) for c, r in runs.items()}
    profiles = {}
    if args.profile:
        with phases("profile one engine decode step per type"):
            for kind in args.types:
                profiles[kind] = run_child(
                    sys.executable, "profile", files[kind], *common,
                    "--quant", "file", "--dtype", args.dtype,
                )  # fmt: skip

    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nGGUF files from llama.cpp's converter and quantizer, TinyLlama-1.1B-shaped; {today}")
    print(f"CPU: {cpu_line()}")
    print(
        "\n| type | file GB | llama.cpp decode @16 tok/s | @512 | prefill 512 s "
        "| engine decode @16 tok/s | @512 | prefill 512 s "
        "| engine / llama.cpp decode @16 | @512 | prefill (time ratio, >1 = faster) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.types:
        size = files[kind].stat().st_size / 1e9
        lc = rows[(kind, "llama.cpp", "file")]
        for quant in ("file", "none") if args.reference else ("file",):
            e = rows[(kind, "engine", quant)]
            label = kind if quant == "file" else f"{kind} → {args.reference_dtype} (--quant none)"
            print(
                f"| {label} | {size:.2f} | {lc['decode_16']:.1f} | {lc['decode_512']:.1f} "
                f"| {lc['prefill_512']:.2f} | {e['decode_16']:.1f} | {e['decode_512']:.1f} "
                f"| {e['prefill_512']:.2f} | {e['decode_16'] / lc['decode_16']:.2f}x "
                f"| {e['decode_512'] / lc['decode_512']:.2f}x "
                f"| {lc['prefill_512'] / e['prefill_512']:.2f}x |"
            )
    print("\n| type | system | load s | peak RSS GB | kernel@threads |\n|---|---|---|---|---|")
    for (kind, system, quant), r in rows.items():
        dtype = args.dtype if quant == "file" else args.reference_dtype
        name = system if system == "llama.cpp" else f"engine --quant {quant} ({dtype})"
        print(
            f"| {kind} | {name} | {r['load_s']:.2f} | {r['peak_rss'] / 1e9:.2f} | {r['kernel']} |"
        )
    print(
        f"\n{args.tokens} greedy tokens after each prompt ({args.tokens - 1} timed steps), "
        f"median of {args.repeat} run(s), each in a fresh process, engine and llama.cpp "
        f"alternating; {THREADS} threads each; {load_line()} at the end."
    )
    if profiles:
        print(
            f"\nWhere an engine decode step goes (--quant file, {args.dtype} activations, "
            f"{THREADS} threads; ms per token, one run; inside the compiled blocks the C code "
            "counts its own time):\n"
        )
        print(
            "| type | context | step ms | weight products (q k v o gate up down) | output head "
            "| attention (rope, cache, softmax·V) | rest (norms, SwiGLU, residual, sampling, "
            "Python) |"
        )
        print("|---|---|---|---|---|---|---|")
        for kind, p in profiles.items():
            for n in CONTEXTS:
                s = p[str(n)]
                step = s["step_ms"]

                def cell(key: str, s=s, step=step) -> str:
                    return f"{s[key]:.1f} ({s[key] / step:.0%})"

                print(
                    f"| {kind} | {n} | {step:.1f} | {cell('products_ms')} | {cell('head_ms')} "
                    f"| {cell('attention_ms')} | {cell('rest_ms')} |"
                )


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (no root needed for clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def seven_b(args: argparse.Namespace, work: Path, phases: Phases) -> None:
    path = work / "llama-2-7b-shaped-Q4_K_M.gguf"
    if not path.is_file():
        with phases("write the 7B-shaped Q4_K_M file (gguf.GGUFWriter)"):
            run_child(sys.executable, "write7b", path, "--out", str(path))
    tokens = ["--tokens", str(args.tokens_7b), "--contexts", "16"]
    rows = []
    with phases("7B: engine first and second open, llama.cpp cold and warm"):
        for system, label in [
            ("engine", "first open (page cache evicted)"),
            ("engine", "second open"),
            ("llama.cpp", "first open (page cache evicted)"),
            ("llama.cpp", "second open"),
        ]:
            if label.startswith("first"):
                evict(path)
            print(f"  7b {system} {label} [{load_line()}]", file=sys.stderr, flush=True)
            if system == "engine":
                r = run_child(
                    sys.executable, "engine", path, *tokens, "--quant", "file",
                    "--dtype", args.dtype,
                )  # fmt: skip
            else:
                r = run_child(args.llama_python, "llama", path, *tokens)
            rows.append((system, label, r))
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\nLlama-2-7B-shaped Q4_K_M file ({path.stat().st_size / 1e9:.2f} GB, llama.cpp's "
        f"Q4_K_M mix of random Q4_K / Q6_K blocks); {today}"
    )
    print(f"CPU: {cpu_line()}")
    print(
        "\n| system | open | load s | prefill 16 s (first touch of the weights) "
        "| decode tok/s @16 | peak RSS GB |\n|---|---|---|---|---|---|"
    )
    for system, label, r in rows:
        print(
            f"| {system} | {label} | {r['load_s']:.2f} | {r['prefill_16']:.2f} "
            f"| {r['decode_16']:.2f} | {r['peak_rss'] / 1e9:.2f} |"
        )
    print(
        f"\n{args.tokens_7b} greedy tokens after a 16-token prompt, one run each, {THREADS} "
        f"threads, engine --quant file with {args.dtype} activations; {load_line()} at the end."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tinyllama", "7b"], default="tinyllama")
    parser.add_argument("--llama-python", help="a Python with llama-cpp-python")
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp's tree (or the sdist)")
    parser.add_argument("--checkpoint", type=Path, help="an HF checkpoint to convert instead")
    parser.add_argument("--types", nargs="+", default=["F16", "Q4_0", "Q8_0", "Q4_K_M"])
    parser.add_argument("--tokens", type=int, default=40, help="greedy tokens per context")
    parser.add_argument("--tokens-7b", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    parser.add_argument(
        "--dtype", default="float32",
        help="the engine's activations (bfloat16 is what 'auto' picks on a CPU; on one without "
        "AVX512-BF16/AMX, torch's bf16 GEMM makes a 512-token prefill take many minutes)",
    )  # fmt: skip
    parser.add_argument(
        "--reference", action="store_true",
        help="also the engine on the file dequantized (--quant none) into --reference-dtype",
    )  # fmt: skip
    parser.add_argument("--reference-dtype", help="default: --dtype")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--keep", type=Path, default=None, help="keep/reuse the files here")
    parser.add_argument("--child", choices=["engine", "llama", "profile", "quantize", "write7b"])
    parser.add_argument("--file")
    parser.add_argument("--out")
    parser.add_argument("--quant", default="file")
    parser.add_argument("--contexts", default="16,512")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not args.llama_python:
        parser.error("--llama-python is needed (a Python with llama-cpp-python)")
    if args.shape == "tinyllama" and not args.llama_cpp and not args.keep:
        parser.error("--llama-cpp is needed to convert the checkpoint (or --keep with the files)")
    args.reference_dtype = args.reference_dtype or args.dtype
    unknown = set(args.types) - {"F16", *FTYPES}
    if unknown:
        parser.error(f"unknown types {sorted(unknown)}; use F16 {' '.join(FTYPES)}")

    phases = Phases()
    work = args.keep or Path(tempfile.mkdtemp(prefix="loopchat-gguf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"files in {work}; {load_line()}", file=sys.stderr)
    started = time.perf_counter()
    try:
        if args.shape == "7b":
            seven_b(args, work, phases)
        else:
            tinyllama(args, work, phases)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    phases.times["total"] = time.perf_counter() - started
    phases.table()


if __name__ == "__main__":
    main()
