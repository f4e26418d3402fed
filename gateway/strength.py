"""How guessable a password or a signing secret is: zxcvbn plus a deny list of our own.

Pure functions (no I/O): a reason in words when the value is refused, ``None`` when it is
accepted. Used by the admin API (``gateway.web.org``), the organisation file import
(``gateway.orgfile``) and the settings (``secret_key``, ``gateway.config``).

- **Passwords** must be at least ``MIN_PASSWORD_LEN`` characters, must not be a deny-listed
  word dressed up with digits and symbols (``Sommar2024!``, ``Hemtjänst1``: zxcvbn rates some
  of those highly because its dictionaries are English), and must reach zxcvbn score
  ``MIN_PASSWORD_SCORE`` with the person's own username, name and id, and our domain words,
  as known inputs (``aaaaaaaaaaaa`` and ``password1234`` score 0 and 1).
- **Secrets** (``secret_key`` signs every access token; a guessed key forges admin tokens)
  must be at least 32 characters and carry enough entropy. The settings check them at
  every start, before the first alarm can be acked, so the common cases are decided by a
  cheap estimate (``secret_bits``: character entropy after dropping repeated blocks, runs
  and sequences): below ``SECRET_REFUSE_BITS`` refused, from ``SECRET_ACCEPT_BITS`` on
  accepted (``secrets.token_urlsafe(48)`` scores about 230). In between (a hex key, a
  passphrase, a keyboard row) zxcvbn decides: at least 10^24 (about 2^80) guesses.

zxcvbn is imported on first use, not with this module: loading its dictionaries takes some
40 ms, which the start of the alarm path should not pay.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

MIN_PASSWORD_LEN = 12
# zxcvbn's score 3: "safely unguessable: moderate protection from offline slow-hash
# scenario" (guesses >= 10^8). Logins are also throttled (gateway.security.LoginGuard), so
# score 3 is enough online; the argon2 hashes make offline guessing slow.
MIN_PASSWORD_SCORE = 3
MIN_SECRET_LEN = 32
# log10 of the guesses zxcvbn must estimate for a signing secret: 10^24 is about 2^80.
MIN_SECRET_GUESSES_LOG10 = 24.0
# The cheap estimate's verdicts. Random hex keys of 32 characters score 80-125, so they go
# to zxcvbn; anything under 48 bits is a pattern (one letter, a word repeated, a run).
SECRET_REFUSE_BITS = 48.0
SECRET_ACCEPT_BITS = 160.0
# zxcvbn refuses longer input (its matching is quadratic); the rest of a longer value can
# only add strength, so judging the first part is the conservative choice.
_ZXCVBN_MAX = 72

# Words that make a password guessable for someone who knows where it is used: the product,
# the domain, the season-and-year pattern popular in Swedish workplaces, and the commonest
# Swedish password words. Compared after folding case, accents and leetspeak and dropping
# digits and symbols, so "H3mtj@nst2025!" is "hemtjanst".
DENY_WORDS = frozenset({
    "trygg", "trygghet", "trygghetslarm", "larm", "alarm", "hemtjanst", "nattpatrull",
    "kommun", "brukare", "omsorg", "personal", "admin", "administrator", "tekniker",
    "password", "passord", "losenord", "losen", "qwerty", "qwertyuiop", "asdfgh",
    "sommar", "vinter", "host", "var", "januari", "februari", "mars", "april", "maj", "juni",
    "juli", "augusti", "september", "oktober", "november", "december", "hejsan", "hej",
    "sverige", "stockholm", "goteborg", "malmo", "welcome", "valkommen", "changeme",
    "changethis", "secret", "hemligt", "test", "demo",
})

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                       "$": "s", "!": "i"})


def _fold(text: str) -> str:
    """Lower case, accents off (å→a, ö→o)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _letters(text: str) -> str:
    return "".join(c for c in _fold(text) if c.isalpha())


def _readings(password: str) -> set[str]:
    """The password's letters, read plainly and with leetspeak undone: "H3mtj@nst1!" is
    "hmtjnst" or "hemtjanstii"; digits and symbols at the ends are padding either way."""
    folded = _fold(password)
    plain = "".join(c for c in folded if c.isalpha())
    leet = "".join(c for c in folded.strip("0123456789!?.,-_#*+ ").translate(_LEET)
                   if c.isalpha())
    return {plain, leet}


def password_problem(password: str, user_inputs: Iterable[str] = ()) -> str | None:
    """Why ``password`` is refused (a sentence for a 422), or None if it is strong enough.

    ``user_inputs``: what is known about its owner (username, name, id); a password built
    from them is weak however long it is.
    """
    if len(password) < MIN_PASSWORD_LEN:
        return f"password: at least {MIN_PASSWORD_LEN} characters"
    inputs = [i for i in user_inputs if i]
    known = DENY_WORDS | {_letters(part) for i in inputs for part in i.split()}
    readings = _readings(password)
    if "" in readings:
        return "password: too easy to guess (no letters); use several unrelated words"
    if any(r in known or _repeats_one_word(r, known) for r in readings):
        return ("password: too easy to guess (a common or known word with digits or "
                "symbols); use several unrelated words")
    result = _zxcvbn(password[:_ZXCVBN_MAX], [*inputs, *DENY_WORDS])
    if result["score"] < MIN_PASSWORD_SCORE:
        hint = result["feedback"]["warning"] or "use several unrelated words"
        return f"password: too easy to guess (strength {result['score']} of 4): {hint}"
    return None


def _repeats_one_word(letters: str, known: frozenset[str] | set[str]) -> bool:
    """``sommarsommar``: one known word, repeated."""
    return any(w and len(letters) % len(w) == 0 and w * (len(letters) // len(w)) == letters
               for w in known)


def _zxcvbn(text: str, user_inputs: list[str] | None = None) -> dict[str, Any]:
    # Imported on first use: see the module docstring.
    from zxcvbn import zxcvbn

    result: Any = zxcvbn(text, user_inputs=user_inputs)
    return dict(result)


def _period(text: str) -> str:
    """The shortest block that ``text`` repeats ("abcabcab" -> "abc")."""
    for size in range(1, len(text) // 2 + 1):
        if all(text[i] == text[i % size] for i in range(len(text))):
            return text[:size]
    return text


def _unpredictable(text: str) -> str:
    """``text`` without the characters that continue a run or a sequence (aaaa, abcd, 4321)."""
    kept = text[:1]
    for i in range(1, len(text)):
        step = ord(text[i]) - ord(text[i - 1])
        if step == 0 or (abs(step) == 1 and i >= 2
                         and ord(text[i - 1]) - ord(text[i - 2]) == step):
            continue
        kept += text[i]
    return kept


def secret_bits(secret: str) -> float:
    """A cheap estimate of a secret's entropy in bits: the character entropy of what is left
    after dropping repeated blocks, runs and sequences, times its length."""
    core = _unpredictable(_period(secret))
    counts = Counter(core)
    per_char = -sum(n / len(core) * math.log2(n / len(core)) for n in counts.values())
    return max(0.0, per_char * len(core))


_MAKE_ONE = "make one with python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


def secret_problem(secret: str) -> str | None:
    """Why a signing secret is refused, or None if it is strong enough."""
    if len(secret) < MIN_SECRET_LEN:
        return f"secret_key must be at least {MIN_SECRET_LEN} characters"
    bits = secret_bits(secret)
    if bits >= SECRET_ACCEPT_BITS:
        return None
    if bits < SECRET_REFUSE_BITS:
        return (f"secret_key is guessable (repeats, runs or few different characters: about "
                f"{bits:.0f} bits); {_MAKE_ONE}")
    guesses = float(_zxcvbn(secret[:_ZXCVBN_MAX])["guesses_log10"])
    if guesses < MIN_SECRET_GUESSES_LOG10:
        return (f"secret_key is guessable (about 10^{guesses:.0f} guesses; at least "
                f"10^{MIN_SECRET_GUESSES_LOG10:.0f} needed); {_MAKE_ONE}")
    return None
