"""Tokens: opaque (no subscriber id readable), authenticated, purpose-bound, one spelling each; the
pre-0.2 shape (id in clear + HMAC tag) is still honoured so links already in inboxes keep working."""

from __future__ import annotations

import base64
import random

import pytest

from mailer import tokens

KEY = b"a-test-key-that-is-long-enough-0123456789"
RNG = random.Random(20261126)
IDS = [0, 1, 2, 3, 255, 256, 65_535, 2 ** 31, 2 ** 63 - 1] + [RNG.randrange(1, 2 ** 40) for _ in range(200)]


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.mark.parametrize("issue_id", [None, 0, 42, 2 ** 32 - 1])
def test_round_trip_for_many_ids(issue_id):
    for subscriber_id in IDS:
        token = tokens.make_token(KEY, "unsubscribe", subscriber_id, issue_id=issue_id)
        data = tokens.read_token(KEY, "unsubscribe", token)
        assert (data.subscriber_id, data.issue_id, data.legacy) == (subscriber_id, issue_id, False)
        assert len(token) == (34 if issue_id is None else 39)
        assert token == tokens.make_token(KEY, "unsubscribe", subscriber_id, issue_id=issue_id)  # stable link


def test_the_subscriber_id_cannot_be_read_from_a_token():
    """The kind: anything that reveals the id. Oracle: the legacy shape, which does reveal it."""
    ids = list(range(1, 1001))
    new = [raw(tokens.make_token(KEY, "unsubscribe", i)) for i in ids]
    old = [raw(tokens.make_legacy_token(KEY, "unsubscribe", i)) for i in ids]
    # the legacy shape carries the id's bytes in clear at a fixed place (what an attacker read)…
    assert all(token[:8] == i.to_bytes(8, "big") for token, i in zip(old, ids))
    # …the new one nowhere: no byte position but the version byte is the same for 1,000 people
    # (consecutive ids share 7 of their 8 bytes), and no token contains its id's bytes
    for position in range(1, len(new[0])):
        assert len({token[position] for token in new}) > 200, position
    assert not any(i.to_bytes(8, "big")[-3:] in token for token, i in zip(new, ids))
    # tokens of neighbours have nothing in common but the version character
    first, second = tokens.make_token(KEY, "unsubscribe", 41), tokens.make_token(KEY, "unsubscribe", 42)
    assert sum(a == b for a, b in zip(first[1:], second[1:])) < 8


def test_a_token_is_bound_to_its_key_and_purpose():
    for subscriber_id in IDS[:50]:
        token = tokens.make_token(KEY, "unsubscribe", subscriber_id)
        with pytest.raises(tokens.InvalidToken):
            tokens.read_token(KEY, "confirm", token)
        with pytest.raises(tokens.InvalidToken):
            tokens.read_token(KEY + b"x", "unsubscribe", token)


def test_every_changed_character_is_refused():
    """Each position, each other character of the alphabet: no second spelling, no forgery."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for maker in (tokens.make_token, tokens.make_legacy_token):
        for subscriber_id, issue_id in ((7, None), (123_456, 42)):
            token = maker(KEY, "unsubscribe", subscriber_id, issue_id)
            accepted = []
            for index in range(len(token)):
                for char in alphabet:
                    if char == token[index]:
                        continue
                    changed = token[:index] + char + token[index + 1:]
                    try:
                        tokens.read_token(KEY, "unsubscribe", changed)
                    except tokens.InvalidToken:
                        continue
                    accepted.append(changed)
            assert accepted == [], (maker.__name__, accepted[:3])


@pytest.mark.parametrize("bad", ["", "x", "!!!!", "a" * 65, "a" * 200, "AAAA", "AQ", "%41", "a b", "a=", "é" * 34])
def test_malformed_tokens_are_refused(bad):
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(KEY, "unsubscribe", bad)


def test_random_bytes_of_every_length_are_refused():
    for length in range(0, 49):
        for _ in range(20):
            candidate = base64.urlsafe_b64encode(RNG.randbytes(length)).rstrip(b"=").decode()
            with pytest.raises(tokens.InvalidToken):
                tokens.read_token(KEY, "unsubscribe", candidate)


def test_legacy_tokens_keep_working_and_stay_purpose_bound():
    for subscriber_id in IDS[:50]:
        for issue_id in (None, 9):
            for purpose in tokens.PURPOSES:
                old = tokens.make_legacy_token(KEY, purpose, subscriber_id, issue_id)
                assert len(old) in (27, 32)
                data = tokens.read_token(KEY, purpose, old)
                assert (data.subscriber_id, data.issue_id, data.legacy) == (subscriber_id, issue_id, True)
                other = "confirm" if purpose == "unsubscribe" else "unsubscribe"
                with pytest.raises(tokens.InvalidToken):
                    tokens.read_token(KEY, other, old)
                with pytest.raises(tokens.InvalidToken):
                    tokens.read_token(b"another key", purpose, old)


def test_web_edition_keys():
    key = tokens.web_edition_key(KEY, "2026-11-26-x")
    assert tokens.check_web_edition_key(KEY, "2026-11-26-x", key)
    assert not tokens.check_web_edition_key(KEY, "2026-11-27-x", key)
    assert not tokens.check_web_edition_key(b"other", "2026-11-26-x", key)
    for bad in ("", key[:-1], key + "A", "é" * 16, None):
        assert not tokens.check_web_edition_key(KEY, "2026-11-26-x", bad)


def test_bulk_makers_give_exactly_the_single_functions_tokens_and_message_ids():
    """The send loop's prepared makers against the one-at-a-time functions (the oracle), on random ids."""
    import random

    from mailer.tokens import MessageIds, TokenMaker, make_token, message_id, read_token

    rng = random.Random(12)
    key = rng.randbytes(32)
    ids = [0, 1, 2**63 - 1] + [rng.randrange(2**40) for _ in range(500)]
    tokens_for = TokenMaker(key, "unsubscribe")
    issue_id = rng.randrange(2**32)
    tokens_naming_the_issue = TokenMaker(key, "unsubscribe", issue_id)
    ids_for = MessageIds(key, "2026-11-27-édition", "lettre.example.org")
    for subscriber_id in ids:
        token = tokens_for(subscriber_id)
        assert token == make_token(key, "unsubscribe", subscriber_id)
        assert read_token(key, "unsubscribe", token).subscriber_id == subscriber_id
        with_issue = tokens_naming_the_issue(subscriber_id)
        assert with_issue == make_token(key, "unsubscribe", subscriber_id, issue_id)
        assert read_token(key, "unsubscribe", with_issue).issue_id == issue_id
        assert ids_for(subscriber_id) == message_id(key, "2026-11-27-édition", subscriber_id, "lettre.example.org")
    assert ids_for.many(ids) == [message_id(key, "2026-11-27-édition", i, "lettre.example.org") for i in ids]


@pytest.mark.parametrize("key_length", (1, 32, 63, 64, 65, 200))
def test_message_ids_are_hmac_sha256_whatever_the_key_length(key_length):
    """`MessageIds` computes HMAC-SHA256 itself: keys below, at and above SHA-256's 64-byte block
    (a longer key is hashed first, RFC 2104) give `message_id`'s ids (`hmac`, the oracle)."""
    from mailer.tokens import MessageIds, message_id

    rng = random.Random(key_length)
    key = rng.randbytes(key_length)
    ids = [0, 7, 2**63 - 1] + [rng.randrange(2**40) for _ in range(50)]
    made = MessageIds(key, "lettre-n°12", "example.org")
    assert [made(i) for i in ids] == made.many(ids) == [message_id(key, "lettre-n°12", i, "example.org") for i in ids]


def test_batched_tokens_refuse_ids_out_of_range_as_single_tokens_do():
    maker = tokens.TokenMaker(b"k" * 32, "unsubscribe", 5)
    for bad in (-1, 2**64):
        with pytest.raises(OverflowError):
            maker(bad)
        with pytest.raises(OverflowError):
            maker.many([1, bad])


@pytest.mark.parametrize("seed", range(4))
def test_batched_tokens_are_exactly_aes_siv_tokens(seed):
    """`TokenMaker.many` (two AES-ECB calls per batch, tokens.SivBatch) against `cryptography`'s AESSIV
    through `make_token` (the oracle): random keys of any length, both purposes, with and without an
    issue id, ids at the ends of their range, batches of 0 to 1000; every token also reads back."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    rng = random.Random(seed)
    key = rng.randbytes(rng.choice((16, 32, 33, 64, 100)))
    purpose = rng.choice(tokens.PURPOSES)
    issue_id = rng.choice((None, 0, 2**32 - 1, rng.randrange(2**32)))
    ids = [0, 1, 2**63 - 1] + [rng.randrange(2**rng.choice((8, 32, 63))) for _ in range(rng.choice((0, 1, 997)))]
    made = tokens.TokenMaker(key, purpose, issue_id).many(ids)
    assert made == [tokens.make_token(key, purpose, i, issue_id) for i in ids]
    assert tokens.TokenMaker(key, purpose, issue_id).many([]) == []
    for token, subscriber_id in zip(made[:50], ids):
        data = tokens.read_token(key, purpose, token)
        assert (data.subscriber_id, data.issue_id) == (subscriber_id, issue_id)
    # the construction itself, on other associated data and every plaintext length below a block
    siv_key = rng.randbytes(rng.choice((32, 48, 64)))
    associated = [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 4))]
    plaintexts = [rng.randbytes(rng.randrange(0, 16)) for _ in range(64)]
    assert tokens.SivBatch(siv_key, associated).encrypt(plaintexts) == [
        b"\x02" + AESSIV(siv_key).encrypt(p, associated) for p in plaintexts]
