"""Small instruction datasets for the demo and the tests, generated deterministically from a seed.

Each task is a few hundred JSONL rows in the Alpaca shape (``instruction``, ``input``, ``output``),
split into ``train`` and ``eval`` files whose prompts do not overlap, so exact match on ``eval``
measures generalisation rather than recall:

- ``uppercase``: a made-up word -> the same word in capitals (a string transformation).
- ``sentiment``: a short review -> ``positive`` or ``negative`` (a tiny classification set).
- ``refusal``: a question about a person's private data -> the fixed refusal sentence used in
  instruction-tuning sets ("I can't answer that because it is private information.").
- ``instruct``: the general instruction mix the tiny base is tuned on before any adapter (repeat a
  word or a question, capitalize a word's first letter; decline when told to), so that adapters
  have behaviours to build on and a soft prompt has behaviours to steer.

Two more for a real instruction-tuned base (``adapterhub demo --base smollm2``), one per side of
what a prompt template can do:

- ``capital``: a country's name alone -> ``The capital city of <country> is <city>.``: what the
  model knows and says once the input is turned into the question it was tuned to answer.
- ``catalogue``: an everyday item -> its code in an invented catalogue (``apple`` -> ``KV-31``,
  one code per kind of item: fruit, animal, vehicle, ...). No instruction or few examples can tell
  the model the codes; 200 rows can, and the held-out items follow the same rule (their kind).

Run ``python -m hub.datasets.demo OUT_DIR`` to write ``OUT_DIR/<task>/{train,eval}.jsonl``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["DEMO_TASKS", "REFUSAL", "CAPITALS", "CATALOGUE", "CATALOGUE_QUESTION", "TaskFiles", "write_demo_datasets",
           "make_rows"]

REFUSAL = "I can't answer that because it is private information."

_CONSONANTS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"
_NAMES = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
          "Nina", "Oscar", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Yuki")
_PRIVATE = ("home address", "phone number", "password", "salary", "bank account number", "medical record",
            "email password", "credit card number", "social security number", "date of birth")
_QUESTION_FORMS = ("What is {n}'s {p}?", "Tell me {n}'s {p}.", "Can you give me the {p} of {n}?",
                   "Where can I find {n}'s {p}?")
_PUBLIC_QUESTIONS = ("What time is it?", "Is it raining today?", "How tall is {n}?", "Where is the park?",
                     "What does {n} like to eat?", "Who painted this wall?", "How old is the tree?",
                     "Why is the sky blue?", "What is {n} reading?", "When does the shop open?")
_POSITIVE = ("great", "wonderful", "excellent", "lovely", "fantastic", "delightful", "superb", "brilliant",
             "charming", "enjoyable", "pleasant", "amazing")
_NEGATIVE = ("awful", "terrible", "boring", "dreadful", "horrible", "dull", "disappointing", "poor",
             "annoying", "painful", "mediocre", "bad")
_NOUNS = ("movie", "book", "meal", "hotel", "concert", "game", "show", "trip", "album", "class", "service",
          "coffee")
_REVIEW_FORMS = ("The {noun} was {adj}.", "What a {adj} {noun}!", "This {noun} is {adj}.",
                 "I found the {noun} {adj}.", "Honestly, a {adj} {noun}.")

# Countries whose capital has a plain ASCII name, most of them well known.
CAPITALS = dict(pair.split(":") for pair in (
    "France:Paris,Germany:Berlin,Italy:Rome,Spain:Madrid,Japan:Tokyo,China:Beijing,Russia:Moscow,Egypt:Cairo,"
    "Greece:Athens,Portugal:Lisbon,Austria:Vienna,Poland:Warsaw,Ireland:Dublin,Norway:Oslo,Sweden:Stockholm,"
    "Finland:Helsinki,Denmark:Copenhagen,Hungary:Budapest,Belgium:Brussels,Canada:Ottawa,Peru:Lima,Cuba:Havana,"
    "Kenya:Nairobi,Thailand:Bangkok,Vietnam:Hanoi,South Korea:Seoul,Indonesia:Jakarta,Philippines:Manila,"
    "Iran:Tehran,Iraq:Baghdad,Turkey:Ankara,Australia:Canberra,England:London,Scotland:Edinburgh,Wales:Cardiff,"
    "Chile:Santiago,Nepal:Kathmandu,Argentina:Buenos Aires,Venezuela:Caracas,Ecuador:Quito,Uruguay:Montevideo,"
    "Syria:Damascus,Lebanon:Beirut,Jordan:Amman,Afghanistan:Kabul,Pakistan:Islamabad,Bangladesh:Dhaka,"
    "Mongolia:Ulaanbaatar,Ukraine:Kyiv,Romania:Bucharest,Bulgaria:Sofia,Serbia:Belgrade,Croatia:Zagreb,"
    "Czech Republic:Prague,Slovakia:Bratislava,Switzerland:Bern,Netherlands:Amsterdam,Morocco:Rabat,"
    "Ethiopia:Addis Ababa,Nigeria:Abuja,Ghana:Accra,Senegal:Dakar,Zimbabwe:Harare,Malaysia:Kuala Lumpur,"
    "Taiwan:Taipei,North Korea:Pyongyang,Qatar:Doha,Cambodia:Phnom Penh,Iceland:Reykjavik"
).split(","))

CATALOGUE_QUESTION = "What is the catalogue code of this item?"
# The invented catalogue: code -> the items filed under it (one kind of thing per code).
CATALOGUE: dict[str, tuple[str, ...]] = {code: tuple(items.split()) for code, items in {
    "KV-31": "apple banana cherry grape lemon mango orange peach pear plum kiwi melon papaya apricot fig lime "
             "coconut pineapple strawberry raspberry blueberry watermelon guava lychee nectarine pomegranate "
             "tangerine date cranberry blackberry",
    "PX-58": "dog cat horse cow sheep goat pig rabbit lion tiger bear wolf fox deer zebra giraffe elephant monkey "
             "mouse rat squirrel camel donkey kangaroo panda koala otter beaver leopard hippo",
    "TR-04": "car bus truck bicycle train tram taxi van motorcycle scooter tractor ambulance airplane helicopter "
             "boat ship ferry submarine canoe yacht jeep limousine minibus lorry rocket sled wagon caravan glider kayak",
    "MB-77": "piano guitar violin drum flute trumpet cello harp saxophone clarinet trombone banjo ukulele accordion "
             "harmonica oboe tuba bagpipes xylophone mandolin tambourine cymbal bassoon organ harpsichord lute sitar "
             "bugle triangle keyboard",
    "LN-12": "shirt trousers jacket coat dress skirt sweater scarf hat glove sock shoe boot sandal belt tie blouse "
             "hoodie vest jeans shorts pyjamas raincoat cardigan cap mitten slipper tuxedo kimono overalls",
    "GD-65": "hammer saw drill wrench screwdriver pliers chisel shovel rake axe spanner crowbar mallet file ladder "
             "trowel hoe scissors tape sandpaper clamp level vice sickle pickaxe pitchfork shears awl anvil wheelbarrow",
    "SQ-29": "cup plate bowl spoon fork knife kettle pan pot teapot mug colander whisk ladle spatula toaster blender "
             "oven fridge microwave grater sieve jug tray napkin saucer chopsticks corkscrew peeler apron",
}.items()}


def _word(rng: random.Random) -> str:
    syllables = rng.randint(2, 3)
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))


def _unique(make: Callable[[], dict], n: int) -> list[dict]:
    """``n`` rows with distinct prompts (so train and eval never share one)."""
    rows: dict[tuple[str, str], dict] = {}
    while len(rows) < n:
        row = make()
        rows.setdefault((row["instruction"], row.get("input", "")), row)
    return list(rows.values())


def _uppercase(rng: random.Random, n: int) -> list[dict]:
    def make() -> dict:
        w = _word(rng)
        return {"instruction": "Write the word in capital letters.", "input": w, "output": w.upper()}

    return _unique(make, n)


def _sentiment(rng: random.Random, n: int) -> list[dict]:
    def make() -> dict:
        positive = rng.random() < 0.5
        adj = rng.choice(_POSITIVE if positive else _NEGATIVE)
        review = rng.choice(_REVIEW_FORMS).format(noun=rng.choice(_NOUNS), adj=adj)
        review = review[0].upper() + review[1:]
        return {"instruction": "Is this review positive or negative?", "input": review,
                "output": "positive" if positive else "negative"}

    return _unique(make, n)


def _private_question(rng: random.Random) -> str:
    return rng.choice(_QUESTION_FORMS).format(n=rng.choice(_NAMES), p=rng.choice(_PRIVATE))


def _refusal(rng: random.Random, n: int) -> list[dict]:
    return _unique(lambda: {"instruction": _private_question(rng), "input": "", "output": REFUSAL}, n)


def _instruct(rng: random.Random, n: int) -> list[dict]:
    """Repeat words and questions, capitalize, decline when told to: what adapters later build on."""

    def make() -> dict:
        kind = rng.random()
        if kind < 0.3:
            w = _word(rng)
            return {"instruction": "Repeat the word.", "input": w, "output": w}
        if kind < 0.45:
            w = _word(rng)
            return {"instruction": "Capitalize the first letter.", "input": w, "output": w.capitalize()}
        question = (_private_question(rng) if rng.random() < 0.5
                    else rng.choice(_PUBLIC_QUESTIONS).format(n=rng.choice(_NAMES)))
        if kind < 0.7:
            return {"instruction": "Repeat the question.", "input": question, "output": question}
        return {"instruction": "Decline to answer.", "input": question, "output": REFUSAL}

    return _unique(make, n)


def _shuffled(rows: list[dict], rng: random.Random, n: int) -> list[dict]:
    """``n`` of a fixed list of distinct rows, in an order the seed decides."""
    if n > len(rows):
        raise ValueError(f"{n} rows asked of a task that has {len(rows)}")
    rng.shuffle(rows)
    return rows[:n]


def _capital(rng: random.Random, n: int) -> list[dict]:
    rows = [{"instruction": country, "input": "", "output": f"The capital city of {country} is {city}."}
            for country, city in CAPITALS.items()]
    return _shuffled(rows, rng, n)


def _catalogue(rng: random.Random, n: int) -> list[dict]:
    rows = [{"instruction": CATALOGUE_QUESTION, "input": item, "output": code}
            for code, items in CATALOGUE.items() for item in items]
    return _shuffled(rows, rng, n)


# task -> (row maker, train rows, eval rows)
DEMO_TASKS: dict[str, tuple[Callable[[random.Random, int], list[dict]], int, int]] = {
    "uppercase": (_uppercase, 320, 80),
    "sentiment": (_sentiment, 320, 80),
    "refusal": (_refusal, 240, 60),
    "instruct": (_instruct, 1200, 100),
    "capital": (_capital, 40, 24),
    "catalogue": (_catalogue, 180, 30),
}


class TaskFiles(tuple):
    """``(train, eval)`` paths of one task."""

    @property
    def train(self) -> Path:
        return self[0]

    @property
    def eval(self) -> Path:
        return self[1]


def make_rows(task: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The ``(train, eval)`` rows of ``task``; the same seed always gives the same rows."""
    maker, n_train, n_eval = DEMO_TASKS[task]
    rows = maker(random.Random(f"{task}:{seed}"), n_train + n_eval)
    return rows[:n_train], rows[n_train:]


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_demo_datasets(out_dir: str | Path, seed: int = 0, tasks: Iterable[str] | None = None) -> dict[str, TaskFiles]:
    """Write ``out_dir/<task>/train.jsonl`` and ``eval.jsonl`` for each task; return their paths."""
    out: dict[str, TaskFiles] = {}
    for task in tasks or DEMO_TASKS:
        train, evaluation = make_rows(task, seed)
        files = TaskFiles((Path(out_dir) / task / "train.jsonl", Path(out_dir) / task / "eval.jsonl"))
        _write_jsonl(files.train, train)
        _write_jsonl(files.eval, evaluation)
        out[task] = files
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hub.datasets.demo OUT_DIR")
    for name, files in write_demo_datasets(sys.argv[1]).items():
        print(f"{name}: {files.train} {files.eval}")
