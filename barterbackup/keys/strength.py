"""Refuse main passwords that are too easy to guess.

The onion address is public and is derived from the password, so anyone can
test password guesses against it offline. zxcvbn estimates how many guesses a
password takes; we refuse anything under MIN_BITS. The generated passphrase
of ``barterbackup init`` (7 words of the EFF long list, about 90 bits) clears
the floor by construction.
"""

from __future__ import annotations

import math

from xkcdpass import xkcd_password
from zxcvbn import zxcvbn

from barterbackup.keys.derive import normalize_password

MIN_BITS = 80
PASSPHRASE_WORDS = 7
# zxcvbn refuses passwords over 72 characters; past that length the estimate
# of the prefix is already far above any floor, so that is what is judged.
_ESTIMATE_PREFIX = 72


class WeakPassword(ValueError):
    """The main password is below the strength floor."""


def estimated_bits(password: str) -> float:
    """log2 of the number of guesses zxcvbn expects an attacker needs."""
    if not password:
        return 0.0
    result = zxcvbn(password[:_ESTIMATE_PREFIX])
    return float(result["guesses_log10"]) * math.log2(10)


def check_password_strength(password: str) -> float:
    """Raise WeakPassword unless the password is estimated at MIN_BITS or more.

    What is judged is the normalized form keys derive from: a password
    padded with look-alike characters (superscripts, full-width letters)
    that normalize to plain ones is only as strong as the plain one. The
    error never quotes the password.
    """
    bits = estimated_bits(normalize_password(password))
    if bits < MIN_BITS:
        raise WeakPassword(
            f"main password too weak: estimated {bits:.0f} bits of strength, "
            f"at least {MIN_BITS} are needed because the node's onion address "
            "lets anyone test guesses offline; use a longer passphrase, or run "
            "`barterbackup init` to generate one"
        )
    return bits


def generate_passphrase(words: int = PASSPHRASE_WORDS) -> str:
    """A random passphrase from the EFF long wordlist (7772 words: 12.9 bits each).

    xkcdpass draws with random.SystemRandom, i.e. from the OS's CSPRNG.
    """
    wordlist = [
        word
        for word in xkcd_password.generate_wordlist(
            wordfile=xkcd_password.locate_wordfile("eff-long"),
            min_length=3,
            max_length=9,
        )
        # "t-shirt" and friends would blur the word boundaries.
        if word.isalpha()
    ]
    return str(
        xkcd_password.generate_xkcdpassword(wordlist, numwords=words, delimiter="-")
    )
