"""compel's parse, and the plain-text shortcut that must give exactly what the parser gives."""

from __future__ import annotations

import random

from compel import Compel

from storyboard.models.prompts import _parsed, is_plain, literal

SHAPES = [
    "aldar_kose_man, Aldar Kose, a fur-trimmed conical hat, tricks a merchant, medium shot, the steppe",
    "it's 3.5 o'clock: a 50% discount & a café / bazaar!",
    "x,",
    "",
]


def _fuzz(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab  cd,, .;:!?'/&%#@*=<>~$-_xé09()+[]\"\\"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def test_plain_text_gives_exactly_the_parse_of_compel() -> None:
    plain = [text for text in SHAPES + _fuzz(3000) if is_plain(text)]
    assert len(plain) > 500
    for text in plain:
        assert repr(_parsed(text)) == repr(Compel.parse_prompt_string(text)), text


def test_syntax_and_text_the_parser_rewrites_go_through_the_parser() -> None:
    for text in ("a (red)1.3 hat", "hat++", "hat-", "a  b", " a", "a,b", "a ,b", literal("a (literal) hat"), 'a "q"'):
        assert not is_plain(text), text
    assert is_plain(SHAPES[0])
