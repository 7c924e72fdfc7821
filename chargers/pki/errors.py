"""The PKI's one error type, in a module of its own so the key stores (``storage``, ``hsm``) share it without
importing each other."""


class PkiError(Exception):
    """The PKI cannot do what was asked (not initialised, unknown certificate, bad passphrase, token refused...)."""
