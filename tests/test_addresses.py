"""The fast path of `mailer.addresses` never disagrees with email-validator.

`parse_address` skips the validator (~46 µs an address) for shapes it provably accepts unchanged.
These tests hold it to that: on tricky and random hostile inputs, whenever the fast path accepts,
the validator accepts too and normalises to the very same Address; and `parse_address` /
`address_parts` accept exactly what the validator accepts.
"""

from __future__ import annotations

import random

import pytest

from mailer.addresses import Address, _fast_path, address_parts, parse_address, validator_verdict
from mailer.errors import InvalidAddress

LONG_LABEL = "a" * 63
TRICKY = [
    # plain and case
    "jean.dupont@example.org", "Jean.Dupont@Example.ORG", "JEAN@EXAMPLE.COM", "a@b.co", "A@B.CO",
    "x@sub.sub.example.co.uk", "first+tag@gmail.com", "first_last@example.org", "a-b@example.org",
    "0@example.org", "123@123.com", "a@1.example.org", "a@a1-b2.fr",
    # dots
    ".a@example.org", "a.@example.org", "a..b@example.org", "a.b.c@example.org", "a@.example.org",
    "a@example..org", "a@example.org.", "a@example", "a@.org",
    # quotes, specials, spaces, comments
    '"jean dupont"@example.org', '"a"@example.org', "a\"b@example.org", "a b@example.org", "a(comment)@example.org",
    "a@exa mple.org", " a@example.org ", "\ta@example.org\n", "a@b@example.org", "@example.org", "a@", "",
    "a!b@example.org", "a#b@example.org", "a$b@example.org", "a%b@example.org", "a&b@example.org",
    "a'b@example.org", "a*b@example.org", "a/b@example.org", "a=b@example.org", "a?b@example.org",
    "a^b@example.org", "a`b@example.org", "a{b}@example.org", "a|b@example.org", "a~b@example.org",
    "_a@example.org", "+a@example.org", "-a@example.org", "a_@example.org", "a+@example.org", "a-@example.org",
    "a,b@example.org", "a;b@example.org", "a:b@example.org", "a<b>@example.org", "a[b]@example.org",
    "a\\b@example.org", "<a@example.org>", "Jean <a@example.org>", "a@[127.0.0.1]", "a@[IPv6:::1]",
    # IDN and unicode
    "zoé@example.org", "a@exämple.fr", "a@EXÄMPLE.fr", "a@xn--exmple-cua.fr", "a@XN--EXMPLE-CUA.FR",
    "a@xn--bcher-kva.de", "a@xn--.fr", "a@xn--zz.fr", "a@пример.рф", "a@xn--e1afmkfd.xn--p1ai", "δοκιμή@παράδειγμα.δοκιμή",
    "用户@例子.广告", "a@exam\u00adple.org", "a\u200b@example.org", "a@example\u3002org", "ａ@example.org",
    "a@ｅxample.org", "a@example.org\u0000", "a\u0301@example.org", "a@e\u0301xample.org",
    # special-use and odd TLDs
    "a@example.local", "a@example.LOCAL", "a@x.test", "a@x.Test", "a@x.onion", "a@x.ONION", "a@x.invalid",
    "a@localhost", "a@x.localhost", "a@1.0.0.127.in-addr.arpa", "a@home.arpa", "a@x.arpa", "a@local", "a@test",
    "a@x.example", "a@example.com", "a@x.123", "a@x.1a", "a@x.a1", "a@x.c0m", "a@x.x", "a@x.museum",
    "a@x.abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk", "a@x.co-uk", "a@x.-co",
    # hyphens
    "a@-example.org", "a@example-.org", "a@ex--ample.org", "a@ab--cd.org", "a@a-b-c.org", "a@x.org-", "a@1-2.org",
    # length limits
    "a" * 64 + "@example.org", "a" * 65 + "@example.org", f"a@{LONG_LABEL}.org", f"a@{LONG_LABEL}a.org",
    f"a@{LONG_LABEL}.{LONG_LABEL}.{LONG_LABEL}.{'b' * 57}.org",
    "a" * 64 + "@" + ".".join(["b" * 63] * 2) + "." + "c" * 57 + ".org",
    "a" * 64 + "@" + ".".join(["b" * 63] * 2) + "." + "c" * 58 + ".org",
    "a" * 60 + "@" + ".".join(["b" * 63] * 3) + ".fr",
    "a" * 61 + "@" + ".".join(["b" * 63] * 3) + ".fr",
    "a@" + ".".join(["b"] * 126) + ".fr",
    "a@" + ".".join(["b"] * 127) + ".fr",
]


def _same_verdict(text: str) -> tuple[Address | None, Address | None]:
    """(parse_address's verdict, the validator's), None meaning rejected."""
    try:
        ours: Address | None = parse_address(text)
    except InvalidAddress:
        ours = None
    return ours, validator_verdict(text)


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_cases_agree_with_the_validator(text: str) -> None:
    fast = _fast_path(text.strip())
    expected = validator_verdict(text)
    if fast is not None:
        assert expected == Address(key=fast[0], given=fast[1]), f"fast path accepted {text!r} differently"
    ours, theirs = _same_verdict(text)
    assert ours == theirs
    if theirs is None:
        with pytest.raises(InvalidAddress):
            address_parts(text)
    else:
        assert address_parts(text) == (theirs.key, theirs.given)


def test_fast_path_covers_the_common_shapes() -> None:
    """Otherwise the import would pay the validator's price for everyone."""
    for text in ("jean.dupont@example.org", "Jean.Dupont@Example.ORG", "first+tag@gmail.com", "a_b-c@sub.example.co.uk",
                 "x@123.com", "a" * 64 + "@example.org"):
        assert _fast_path(text) is not None, text
    for text in ("a@x.local", "a@x.TEST", "a@xn--exmple-cua.fr", "zoé@example.org", "a@x.123", "a" * 65 + "@example.org",
                 "a..b@example.org", "a@ex--ample.org"):
        assert _fast_path(text) is None, text


def test_empty_and_blank_are_rejected() -> None:
    for text in ("", "   ", "\t\n"):
        with pytest.raises(InvalidAddress, match="empty"):
            parse_address(text)


ATOMS = ["a", "B", "z", "Zz", "jean", "Dupont", "0", "42", "x9", "é", "ü", "я", "例", "_", "+", "-", ".", "..", "'", '"',
         "!", "#", "$", "%", "&", "*", "/", "=", "?", "^", "`", "{", "|", "}", "~", "(", ")", ",", ";", ":", "<", ">",
         "[", "]", "\\", " ", "\t", "\u00a0", "\u200b", "\u0301", "\x00", "\x7f", "@"]
LABELS = ["example", "Example", "EXAMPLE", "gmail", "a", "b1", "1", "123", "a-b", "-a", "a-", "a--b", "xn--exmple-cua",
          "xn--bcher-kva", "exämple", "пример", "", "a_b", "a b", "é", "l" * 63, "l" * 64, "sub.domain"]
TLDS = ["com", "org", "fr", "io", "co", "uk", "museum", "x", "a1", "1a", "123", "c0m", "local", "LOCAL", "test", "Test",
        "onion", "invalid", "localhost", "arpa", "example", "xn--p1ai", "рф", "COM", "Org", "", "t" * 63, "t" * 64]


def _plausible(rng: random.Random) -> str:
    """An address of the common shape (which the fast path should take)."""
    words = [rng.choice(("jean", "Marie", "x", "L0uis", "a1", "DUPONT", "b", "42")) for _ in range(rng.randrange(1, 4))]
    local = words[0] + "".join(rng.choice(".+_-") + word for word in words[1:])
    labels = [rng.choice(("example", "gmail", "Sub", "a-b", "b1", "123", "x")) for _ in range(rng.randrange(1, 3))]
    return f"{local}@{'.'.join(labels)}.{rng.choice(('com', 'fr', 'ORG', 'Io', 'museum', 'co'))}"


def _random_address(rng: random.Random) -> str:
    shape = rng.random()
    if shape < 0.1:  # pure noise
        return "".join(rng.choice(ATOMS) for _ in range(rng.randrange(0, 12)))
    if shape < 0.6:  # the common shape, often with one hostile edit somewhere
        text = _plausible(rng)
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            at = rng.randrange(len(text) + 1)
            edit = rng.random()
            if edit < 0.4:
                text = text[:at] + rng.choice(ATOMS) + text[at:]
            elif edit < 0.7:
                text = text[:at] + rng.choice(ATOMS) + text[at + 1:]
            else:
                text = text[:at] + text[at + 1:]
        return text
    local = "".join(rng.choice(ATOMS[:12] if rng.random() < 0.6 else ATOMS) for _ in range(rng.randrange(0, 8)))
    if rng.random() < 0.1:
        local = rng.choice("abcXYZ09") * rng.choice((63, 64, 65, 66))
    labels = [rng.choice(LABELS) for _ in range(rng.randrange(0, 4))]
    if rng.random() < 0.05:
        labels = ["d" * 63] * rng.randrange(2, 5)
    domain = ".".join([*labels, rng.choice(TLDS)])
    if rng.random() < 0.1:
        domain = domain.upper() if rng.random() < 0.5 else domain.title()
    text = f"{local}@{domain}" if rng.random() > 0.03 else local + domain
    if rng.random() < 0.05:
        text = rng.choice((" ", "\t", "\n", "\u00a0")) + text + rng.choice(("", " ", "\r\n"))
    return text


def test_fuzz_against_the_validator() -> None:
    rng = random.Random(20261126)
    fast_accepted = validator_accepted = 0
    disagreements = []
    for _ in range(6000):
        text = _random_address(rng)
        fast = _fast_path(text.strip())
        ours, theirs = _same_verdict(text)
        if fast is not None:
            fast_accepted += 1
            if theirs != Address(key=fast[0], given=fast[1]):
                disagreements.append((text, fast, theirs))
        if ours != theirs:
            disagreements.append((text, ours, theirs))
        validator_accepted += theirs is not None
    assert not disagreements, disagreements[:10]
    # The fuzz must reach both sides of the fast path, or it proves nothing.
    assert fast_accepted > 500 and validator_accepted > fast_accepted
