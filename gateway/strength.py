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
  must be at least 32 characters and need about 2^80 guesses by zxcvbn's estimate, which
  refuses repeated letters and words with padding while accepting any random string from
  ``secrets.token_urlsafe(32)`` or ``openssl rand -hex 16`` upwards.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from zxcvbn import zxcvbn

MIN_PASSWORD_LEN = 12
# zxcvbn's score 3: "safely unguessable: moderate protection from offline slow-hash
# scenario" (guesses >= 10^8). Logins are also throttled (gateway.security.LoginGuard), so
# score 3 is enough online; the argon2 hashes make offline guessing slow.
MIN_PASSWORD_SCORE = 3
MIN_SECRET_LEN = 32
# log10 of the guesses zxcvbn must estimate for a signing secret: 10^24 is about 2^80.
MIN_SECRET_GUESSES_LOG10 = 24.0
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
    result = zxcvbn(password[:_ZXCVBN_MAX], user_inputs=[*inputs, *DENY_WORDS])
    if result["score"] < MIN_PASSWORD_SCORE:
        hint = result["feedback"]["warning"] or "use several unrelated words"
        return f"password: too easy to guess (strength {result['score']} of 4): {hint}"
    return None


def _repeats_one_word(letters: str, known: frozenset[str] | set[str]) -> bool:
    """``sommarsommar``: one known word, repeated."""
    return any(w and len(letters) % len(w) == 0 and w * (len(letters) // len(w)) == letters
               for w in known)


def secret_problem(secret: str) -> str | None:
    """Why a signing secret is refused, or None if it is strong enough."""
    if len(secret) < MIN_SECRET_LEN:
        return f"secret_key must be at least {MIN_SECRET_LEN} characters"
    guesses = float(zxcvbn(secret[:_ZXCVBN_MAX])["guesses_log10"])
    if guesses < MIN_SECRET_GUESSES_LOG10:
        return (
            f"secret_key is guessable (about 10^{guesses:.0f} guesses; at least "
            f"10^{MIN_SECRET_GUESSES_LOG10:.0f} needed): make one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return None
