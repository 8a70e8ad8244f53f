"""Writes dolly-tiny.jsonl and chat-tiny.jsonl: small datasets written by us, with patterns a tiny model
can learn in a few hundred CPU steps; and dolly-smol.jsonl, Dolly-format rows for the real SmolLM2-135M demo:
many small task families, every answer correct and in one short house style ("The capital of Peru is Lima."),
which the instruction-tuned base model does not use by itself, so the fine-tuned model's held-out loss on
rows it never saw shows what the LoRA learned. Deterministic; rerun: python examples/data/make_datasets.py
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


MORE_CAPITALS = {"Argentina": "Buenos Aires", "Australia": "Canberra", "Belgium": "Brussels", "Brazil": "Brasilia",
                 "China": "Beijing", "Colombia": "Bogota", "Denmark": "Copenhagen", "Finland": "Helsinki",
                 "Hungary": "Budapest", "India": "New Delhi", "Mexico": "Mexico City", "Morocco": "Rabat",
                 "Netherlands": "Amsterdam", "Nigeria": "Abuja", "Pakistan": "Islamabad", "Russia": "Moscow",
                 "Thailand": "Bangkok", "Turkey": "Ankara", "Ukraine": "Kyiv", "Vietnam": "Hanoi"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "early": "late",
             "open": "closed", "full": "empty", "hard": "soft", "high": "low", "rich": "poor", "wet": "dry",
             "strong": "weak", "young": "old", "loud": "quiet", "thick": "thin"}
PLURALS = {"mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese",
           "man": "men", "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives",
           "wolf": "wolves", "city": "cities", "box": "boxes", "bus": "buses", "cactus": "cacti", "ox": "oxen"}
KINDS = {"an animal": ["horse", "tiger", "rabbit", "eagle", "salmon", "frog", "sheep", "owl"],
         "a plant": ["oak", "rose", "fern", "tulip", "cactus", "maple", "daisy", "bamboo"],
         "a tool": ["hammer", "saw", "wrench", "shovel", "drill", "chisel", "rake", "screwdriver"]}
PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
JOBS = ["a nurse", "a pilot", "a baker", "a teacher", "an engineer", "a farmer", "a chef", "a painter"]
TOWNS = ["Lyon", "Porto", "Graz", "Turin", "Ghent", "Bergen", "Cork", "Split", "Tartu", "Brno"]


def smol_rows(rng: random.Random) -> list[dict[str, str]]:
    rows = []

    def add(instruction: str, response: str, category: str, context: str = "") -> None:
        rows.append({"instruction": instruction, "context": context, "response": response, "category": category})

    for country, city in {**CAPITALS, **MORE_CAPITALS}.items():
        add(f"What is the capital of {country}?", f"The capital of {country} is {city}.", "open_qa")
    for word, opposite in OPPOSITES.items():
        add(f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}.", "open_qa")
    for word, plural in PLURALS.items():
        add(f"What is the plural of {word}?", f"The plural of {word} is {plural}.", "open_qa")
    for kind, things in KINDS.items():
        for thing in things:
            add(f"Is a {thing} an animal, a plant or a tool?", f"A {thing} is {kind}.", "classification")
    pairs = sorted({(rng.randint(11, 60), rng.randint(11, 39)) for _ in range(60)})
    for a, b in pairs[:40]:
        add(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", "open_qa")
    for hours in range(1, 13):
        add(f"How many minutes are in {hours} hours?", f"{hours} hours is {60 * hours} minutes.", "open_qa")
    for person in PEOPLE:
        job, town, age = rng.choice(JOBS), rng.choice(TOWNS), rng.randint(23, 64)
        bio = f"{person} is {age} years old and works as {job} in {town}."
        add(f"Where does {person} work?", f"{person} works in {town}.", "closed_qa", bio)
        add(f"What is {person}'s job?", f"{person} is {job}.", "closed_qa", bio)
        add(f"How old is {person}?", f"{person} is {age} years old.", "closed_qa", bio)
    for thing, color in COLORS.items():
        add("Summarize the text in one word.", color.capitalize() + ".", "summarization",
            f"The {thing} in the picture is {color}, clearly and brightly {color}.")
    rng.shuffle(rows)
    return rows


def main() -> None:
    here = Path(__file__).resolve().parent
    rng = random.Random(1234)
    for name, rows in (("dolly-tiny.jsonl", dolly_rows(rng)), ("chat-tiny.jsonl", chat_rows(rng))):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    # Its own generator: adding it leaves the two files above byte for byte as they were.
    rows = smol_rows(random.Random(2024))
    (here / "dolly-smol.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
