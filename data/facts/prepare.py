"""
The default dataset: biographies of made-up people, whose facts a language model has to memorize.

    python data/facts/prepare.py [--out_dir=data/facts] [--seed=1337] [--n_people=500]
                                 [--bios_per_person=5] [--val_bios=1]

Needs no network and no file outside the repo: the corpus is generated (deterministic for the arguments)
and tokenized by characters from a fixed alphabet. Every person has 6 facts (birth city, birth year,
employer, job, favourite colour, favourite food) and bios_per_person short biographies, each stating all
6 facts, one sentence per fact, in a random order and with a randomly chosen phrasing per sentence. The
last val_bios biographies of each person go to val: the same facts in a new arrangement, so validation
loss measures recall of stored facts rather than of sentences. All biographies of a split are shuffled
together, so two of one person's biographies rarely share a context window (no copying in context).
facts.jsonl holds one line per (person, attribute): {"person", "attribute", "prompt", "answer"}, where
prompt + answer is a sentence prefix plus its value exactly as it appears in that person's training text,
e.g. "Alia Brenmor was born in the city of" + " Torvale", for exact recall scoring by greedy decoding.
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root
from data.common import CharTokenizer, atomic_write_text, sha256_file, write_dataset  # noqa: E402

CHARS = "\n !',-.0123456789:?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # fixed: ids never change

# name syllables: onset + vowel (+ coda); first names come from a smaller pool, so surnames matter
ONSETS = "b br d dr f g gr h k l m n p r s st t th v z".split()
VOWELS = "a e i o u ai".split()
CODAS = ["", "", "", "n", "r", "l", "s", "m"]

VALUES = {  # made-up places and companies; ordinary words for the rest
    "birth_city": ["Torvale", "Brenmoor", "Quillan", "Saverno", "Odrinth", "Kelmast", "Duravia", "Fennick",
                   "Marrowby", "Istrabel", "Polvenna", "Vantrice", "Ulmsted", "Carrowen", "Zelbrook",
                   "Noravin", "Hestrel", "Gallowmere", "Rydonia", "Ebbenford", "Lasqueth", "Morvanne",
                   "Thistlecombe", "Averholt"],
    "birth_year": [str(y) for y in range(1900, 2000)],
    "employer": ["Velmora Works", "Quintal Mills", "Orbanix", "Tessaly Foods", "Granholt Bank", "Myrrow Press",
                 "Calder and Voss", "Zentrofy", "Lumora Labs", "Hexbury Rail", "Ostrel Shipping", "Pallanor",
                 "Brightfen Energy", "Korvath Steel", "Nimbrel Games", "Selwick Hospital", "Rundell Insurance",
                 "Ivoro Textiles", "Dunmere Books", "Aurelix Motors"],
    "job": ["baker", "pilot", "tailor", "farmer", "nurse", "lawyer", "painter", "carpenter", "sailor", "teacher",
            "potter", "miner", "brewer", "butcher", "dentist", "doctor", "gardener", "jeweler", "librarian",
            "mechanic", "plumber", "poet", "surgeon", "weaver"],
    "colour": ["red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
               "teal", "gold", "silver", "violet", "crimson"],
    "food": ["plum cake", "lentil soup", "roast duck", "apple pie", "fried rice", "pumpkin bread", "fish stew",
             "cheese pie", "onion tart", "rice pudding", "mushroom risotto", "lamb curry", "honey bread",
             "bean chili", "potato salad", "pea soup", "lemon tart", "spiced beef", "fig jam", "corn fritters"],
}
TEMPLATES = {  # "{n}" (the full name) always comes before "{v}", so a prefix up to "{v}" is a recall prompt
    "birth_city": ["{n} was born in the city of {v}.", "{n} comes from the city of {v}.",
                   "The birthplace of {n} is {v}."],
    "birth_year": ["{n} was born in the year {v}.", "{n} came into the world in {v}.",
                   "The birth year of {n} is {v}."],
    "employer": ["{n} works for {v}.", "{n} is employed by {v}.", "The employer of {n} is {v}."],
    "job": ["{n} works as a {v}.", "By profession, {n} is a {v}.", "{n} earns a living as a {v}."],
    "colour": ["{n}'s favourite colour is {v}.", "The favourite colour of {n} is {v}.",
               "{n} likes the colour {v} best."],
    "food": ["{n}'s favourite food is {v}.", "The favourite dish of {n} is {v}.", "{n} loves to eat {v}."],
}
ATTRIBUTES = list(VALUES)


def make_word(rng: random.Random, n_syllables: int) -> str:
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(n_syllables)) + rng.choice(CODAS)
    return word.capitalize()


def make_people(rng: random.Random, n_people: int) -> list[dict]:
    first_names = sorted({make_word(rng, 2) for _ in range(max(20, n_people // 4))})
    names = set()
    while len(names) < n_people:
        names.add(f"{rng.choice(first_names)} {make_word(rng, rng.choice((2, 3)))}")
    people = [{"name": name, **{a: rng.choice(VALUES[a]) for a in ATTRIBUTES}} for name in sorted(names)]
    rng.shuffle(people)
    return people


def make_bio(rng: random.Random, person: dict) -> tuple[str, dict]:
    """A biography stating every fact once, and the template index used for each attribute."""
    picks = {a: rng.randrange(len(TEMPLATES[a])) for a in ATTRIBUTES}
    sentences = [TEMPLATES[a][picks[a]].format(n=person["name"], v=person[a]) for a in ATTRIBUTES]
    rng.shuffle(sentences)
    return " ".join(sentences) + "\n", picks


def generate(seed: int = 1337, n_people: int = 500, bios_per_person: int = 5, val_bios: int = 1):
    """(train_docs, val_docs, facts, people): lists of biography strings, of fact dicts, of person dicts."""
    if n_people < 1 or not 1 <= val_bios < bios_per_person:
        raise ValueError("need n_people >= 1 and 1 <= val_bios < bios_per_person")
    rng = random.Random(seed)
    people = make_people(rng, n_people)
    train, val, facts = [], [], []
    for person in people:
        bios = {}  # text -> template picks; distinct texts only
        while len(bios) < bios_per_person:
            text, picks = make_bio(rng, person)
            bios.setdefault(text, picks)
        texts = list(bios)
        train += texts[:-val_bios]
        val += texts[-val_bios:]
        first_picks = bios[texts[0]]  # prompts use the phrasing of the person's first training biography
        for a in ATTRIBUTES:
            prompt, _ = TEMPLATES[a][first_picks[a]].format(n=person["name"], v="\0").split(" \0")
            facts.append({"person": person["name"], "attribute": a, "prompt": prompt, "answer": " " + person[a]})
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val, facts, people


def main(argv=None):
    p = argparse.ArgumentParser(description="Generate the synthetic facts dataset (character-level).")
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)), help="default: data/facts")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--n_people", type=int, default=500)
    p.add_argument("--bios_per_person", type=int, default=5)
    p.add_argument("--val_bios", type=int, default=1, help="biographies per person held out for val")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        train, val, facts, people = generate(args.seed, args.n_people, args.bios_per_person, args.val_bios)
        os.makedirs(args.out_dir, exist_ok=True)
        tok = CharTokenizer(CHARS)
        facts_text = "".join(json.dumps(f) + "\n" for f in facts)
        atomic_write_text(os.path.join(args.out_dir, "facts.jsonl"), facts_text)
        meta = write_dataset(args.out_dir, map(tok.encode, train), map(tok.encode, val), {
            "tokenizer": "char", "chars": CHARS, "vocab_size": tok.vocab_size, "eot_token": tok.eot_token,
            "source": f"synthetic: python data/facts/prepare.py --seed={args.seed} --n_people={args.n_people} "
                      f"--bios_per_person={args.bios_per_person} --val_bios={args.val_bios}",
            "source_sha256": sha256_file(os.path.abspath(__file__)),  # the generator's own code
            "n_people": len(people), "attributes": ATTRIBUTES, "n_facts": len(facts),
            "facts_file": "facts.jsonl", "facts_sha256": sha256_file(os.path.join(args.out_dir, "facts.jsonl"))})
    except (ValueError, OSError) as e:
        print(f"facts/prepare.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.out_dir}: {len(people)} people x {len(ATTRIBUTES)} attributes = {len(facts)} facts; "
          f"char vocab {meta['vocab_size']} ({meta['dtype']})")
    print(f"  train: {meta['train_docs']:,} biographies, {meta['train_tokens']:,} tokens")
    print(f"  val:   {meta['val_docs']:,} biographies, {meta['val_tokens']:,} tokens (held-out phrasings)")
    print(f"  example: {train[0].strip()}")
    print(f"  fact:    {facts[0]['prompt']!r} -> {facts[0]['answer']!r}   ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
