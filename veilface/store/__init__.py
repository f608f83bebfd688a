"""The ciphertext store (SQLAlchemy). Only the names below import without SQLAlchemy."""

#: ``admin`` changes anything; ``read`` searches and sees the decision and little else;
#: ``eval`` searches and sees full-precision scores (veilface/api/disclosure.py).
API_KEY_SCOPES = ("admin", "read", "eval")
