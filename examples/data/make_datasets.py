"""Writes dolly-tiny.jsonl and chat-tiny.jsonl: small datasets written by us, with patterns a tiny model
can learn in a few hundred CPU steps. Deterministic; rerun to regenerate: python examples/data/make_datasets.py
"""

import json
import random
from pathlib import Path

CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
            "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
            "Norway": "Oslo", "Sweden": "Stockholm", "Greece": "Athens", "Poland": "Warsaw", "Cuba": "Havana",
            "Ireland": "Dublin", "Austria": "Vienna", "Portugal": "Lisbon", "Iran": "Tehran", "Nepal": "Kathmandu"}
WORDS = ["cat", "dog", "sun", "tree", "book", "lamp", "rain", "fish", "bird", "moon", "star", "road"]
COLORS = {"banana": "yellow", "grass": "green", "sky": "blue", "snow": "white", "coal": "black",
          "tomato": "red", "orange": "orange", "plum": "purple"}


def dolly_rows(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for country, city in CAPITALS.items():
        rows.append({"instruction": f"What is the capital of {country}?", "context": "",
                     "response": f"The capital of {country} is {city}.", "category": "open_qa"})
        rows.append({"instruction": "Which city is the capital?", "context": f"{city} is the capital of {country}.",
                     "response": f"{city}.", "category": "closed_qa"})
    for _ in range(70):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"instruction": f"What is {a} plus {b}?", "context": "", "response": f"{a} plus {b} is {a + b}.",
                     "category": "open_qa"})
    for word in WORDS:
        for prefix in ("Reverse the word", "Spell backwards"):
            rows.append({"instruction": f"{prefix}: {word}", "context": "", "response": word[::-1],
                         "category": "generation"})
    for thing, color in COLORS.items():
        rows.append({"instruction": f"What color is {thing}?", "context": "", "response": f"{thing} is {color}.",
                     "category": "open_qa"})
        rows.append({"instruction": "Summarize in one word.", "context": f"The {thing} is {color} and bright.",
                     "response": color, "category": "summarization"})
    rng.shuffle(rows)
    return rows


def chat_rows(rng: random.Random) -> list[dict[str, object]]:
    rows = []
    for country, city in list(CAPITALS.items())[:12]:
        rows.append({"messages": [{"role": "system", "content": "You answer briefly."},
                                  {"role": "user", "content": f"Capital of {country}?"},
                                  {"role": "assistant", "content": city}]})
    for _ in range(38):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"messages": [{"role": "user", "content": f"{a}+{b}?"},
                                  {"role": "assistant", "content": str(a + b)}]})
    return rows


def main() -> None:
    here = Path(__file__).resolve().parent
    rng = random.Random(1234)
    for name, rows in (("dolly-tiny.jsonl", dolly_rows(rng)), ("chat-tiny.jsonl", chat_rows(rng))):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
