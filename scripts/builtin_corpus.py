"""The built-in model's corpus: dictionary dialogues in Llama 2's chat format, from WordNet 3.0.

WordNet (Princeton University, WordNet 3.0 licence: free to use, copy, modify and distribute with
the copyright notice) comes from Debian's `wordnet-base` package, which installs its database under
/usr/share/wordnet. Each lemma becomes one or two short dialogues ("What does 'ephemeral' mean?" →
its most frequent senses, with an example), so a small model can learn to answer in the domain.

Held-out lemmas are chosen by a hash of the lemma, so the held-out text is never trained on and
the split does not depend on the order of the files.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
MAX_SENSES = 3
HELD_OUT_PERCENT = 1

GREETINGS = [
    (
        "Hello",
        "Hello! I am Loopchat's built-in model, a small dictionary assistant. "
        "Ask me what a word means.",
    ),
    ("Hi", "Hi! Ask me what a word means, and I will try to explain it."),
    (
        "Who are you?",
        "I am a small language model that ships with Loopchat. I was trained on "
        "WordNet, so I know what many English words mean.",
    ),
    (
        "What can you do?",
        "I can explain what English words mean, give an example sentence, "
        "and name words with a similar or opposite meaning.",
    ),
    ("Thank you", "You are welcome! Ask me about another word any time."),
]


@dataclass
class Sense:
    pos: str
    definition: str
    examples: list[str]
    synonyms: list[str]
    antonym_offsets: list[tuple[str, str]]  # (offset, pos) of antonym synsets


@dataclass
class Lemma:
    word: str
    senses: list[Sense] = field(default_factory=list)
    tagged: bool = False  # seen in WordNet's sense-tagged corpus: a common word


def _words_of(fields: list[str], count: int) -> list[str]:
    return [fields[4 + 2 * i].replace("_", " ") for i in range(count)]


def _clean_word(word: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", word)  # adjective markers such as "(p)", "(a)"


def read_synsets(wordnet: Path) -> dict[tuple[str, str], tuple[Sense, list[str]]]:
    """(offset, pos) → (sense, lemmas of the synset), for all four data files."""
    synsets: dict[tuple[str, str], tuple[Sense, list[str]]] = {}
    for name in ("noun", "verb", "adj", "adv"):
        for line in (wordnet / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # the licence header
            data, _, gloss = line.partition(" | ")
            fields = data.split()
            offset, pos, count = fields[0], fields[2], int(fields[3], 16)
            words = [_clean_word(w) for w in _words_of(fields, count)]
            pointer_at = 4 + 2 * count
            n_pointers = int(fields[pointer_at])
            antonyms = []
            for i in range(n_pointers):
                symbol, target, target_pos = fields[pointer_at + 1 + 4 * i : pointer_at + 4 + 4 * i]
                if symbol == "!":
                    antonyms.append((target, "a" if target_pos == "s" else target_pos))
            parts = [p.strip() for p in gloss.strip().split(";")]
            definition = parts[0]
            examples = [p.strip('"') for p in parts[1:] if p.startswith('"') and p.endswith('"')]
            sense = Sense(POS_NAMES[pos], definition, examples, words, antonyms)
            synsets[(offset, "a" if pos == "s" else pos)] = (sense, words)
    return synsets


def read_lemmas(wordnet: Path) -> list[Lemma]:
    """Lemmas in file order, each with its senses most frequent first (WordNet's own order)."""
    synsets = read_synsets(wordnet)
    lemmas: dict[str, Lemma] = {}
    for pos, name in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
        for line in (wordnet / f"index.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            fields = line.split()
            word = fields[0].replace("_", " ")
            n_synsets, n_pointers = int(fields[2]), int(fields[3])
            tagged = int(fields[5 + n_pointers]) > 0
            offsets = fields[6 + n_pointers : 6 + n_pointers + n_synsets]
            lemma = lemmas.setdefault(word, Lemma(word))
            lemma.tagged = lemma.tagged or tagged
            for offset in offsets:
                entry = synsets.get((offset, pos))
                if entry is None:
                    continue
                lemma.senses.append(entry[0])
                if lemma.word == word:  # index files are lower case; keep "Paris", "DNA"
                    cased = [w for w in entry[1] if w.lower() == word]
                    lemma.word = cased[0] if cased else word
    # Frequency across parts of speech is not recorded; answers keep the first MAX_SENSES in
    # file order (nouns first), as many dictionaries list them.
    return sorted(lemmas.values(), key=lambda lemma: lemma.word)


def is_held_out(word: str) -> bool:
    digest = hashlib.sha256(word.encode("utf-8")).digest()
    return digest[0] * 100 // 256 < HELD_OUT_PERCENT


def _quote(word: str) -> str:
    return f'"{word}"'


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def meaning_answer(lemma: Lemma) -> str:
    senses = lemma.senses[:MAX_SENSES]
    title = _quote(lemma.word)
    if len(senses) == 1:
        sense = senses[0]
        answer = f"{title} ({sense.pos}) means {_sentence(sense.definition)}"
        if sense.examples:
            answer += f' For example: "{sense.examples[0]}".'
        return answer
    lines = [f"{title} has several meanings:"]
    for i, sense in enumerate(senses, start=1):
        line = f"{i}. ({sense.pos}) {_sentence(sense.definition)}"
        if sense.examples:
            line += f' For example: "{sense.examples[0]}".'
        lines.append(line)
    return "\n".join(lines)


def example_answer(lemma: Lemma) -> str | None:
    for sense in lemma.senses:
        if sense.examples:
            return f'Here is an example with {_quote(lemma.word)}: "{sense.examples[0]}".'
    return None


def synonym_answer(lemma: Lemma) -> str | None:
    for sense in lemma.senses:
        others = [w for w in sense.synonyms if w.lower() != lemma.word.lower()][:4]
        if others:
            context = f"{_quote(lemma.word)} ({sense.pos}, {sense.definition})"
            if len(others) == 1:
                return f"A word with a similar meaning to {context} is {_quote(others[0])}."
            listed = ", ".join(_quote(w) for w in others[:-1]) + f" and {_quote(others[-1])}"
            return f"Words with a similar meaning to {context} are {listed}."
    return None


def antonym_answer(lemma: Lemma, synsets: dict) -> str | None:
    for sense in lemma.senses:
        for key in sense.antonym_offsets:
            entry = synsets.get(key)
            if entry:
                return (
                    f"The opposite of {_quote(lemma.word)} is {_quote(entry[1][0])}, "
                    f"which means {_sentence(entry[0].definition)}"
                )
    return None


MEANING_QUESTIONS = [
    'What does "{w}" mean?',
    "What does {w} mean?",
    'What is the meaning of the word "{w}"?',
    "Define {w}.",
    'Can you explain the word "{w}"?',
    "What is the definition of {w}?",
]


def dialogues(lemmas: list[Lemma], synsets: dict, seed: int) -> Iterator[tuple[str, str, str]]:
    """(lemma, question, answer) triples; common words get more than one dialogue."""
    rng = random.Random(seed)
    for lemma in lemmas:
        if not lemma.senses:
            continue
        yield lemma.word, rng.choice(MEANING_QUESTIONS).format(w=lemma.word), meaning_answer(lemma)
        extras = []
        if lemma.tagged:
            extras.append((rng.choice(MEANING_QUESTIONS), meaning_answer(lemma)))
        for question, answer in (
            ('Use "{w}" in a sentence.', example_answer(lemma)),
            ('What is another word for "{w}"?', synonym_answer(lemma)),
            ('What is the opposite of "{w}"?', antonym_answer(lemma, synsets)),
        ):
            if answer and (lemma.tagged or rng.random() < 0.3):
                extras.append((question, answer))
        for question, answer in extras:
            yield lemma.word, question.format(w=lemma.word), answer


def build(wordnet: Path, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held_out) lists of (question, answer)."""
    synsets = read_synsets(wordnet)
    lemmas = read_lemmas(wordnet)
    train: list[tuple[str, str]] = []
    held_out: list[tuple[str, str]] = []
    for word, question, answer in dialogues(lemmas, synsets, seed):
        (held_out if is_held_out(word) else train).append((question, answer))
    greetings = [pair for pair in GREETINGS for _ in range(20)]
    train += greetings
    random.Random(seed).shuffle(train)
    return train, held_out
