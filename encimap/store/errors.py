class StoreError(Exception):
    """A request the data does not allow; the message is fit for an operator."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class LimitReached(StoreError):
    """A configured limit (such as the number of folders of a vaultbox) is reached."""
