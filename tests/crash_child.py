"""Child process for the crash test: stream a real reply into the store, slowly, until killed."""

from __future__ import annotations

import sys
import time

from desktop.store import Autosaver, ConversationStore
from engine.chat import Message, chat_prompt_ids
from engine.generate import Generator
from engine.loader import load_model
from engine.sampling import SamplingParams


def main(model: str, db: str) -> None:
    store = ConversationStore(db)
    loaded = load_model(model, dtype="float32", device="cpu")
    conv = store.create_conversation("", loaded.name)
    question = "Tell me everything about loops"
    store.add_message(conv, "user", question)
    reply = store.start_reply(conv, loaded.name, {"temperature": 1.0})
    saver = Autosaver(store, reply)
    ids = chat_prompt_ids(loaded.tokenizer, [Message("user", question)], loaded.chat_template)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    # Seeded: this fixture model does not sample EOS within the first 400 tokens.
    for step in Generator(loaded).generate(ids, params, max_new_tokens=400):
        if saver.add(step.to_dict()):
            print(f"flushed {saver.saved_steps}", flush=True)
        time.sleep(0.01)
    saver.finish("done", "max_tokens")
    print("finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
