"""The client of client-key galleries: the server never holds the key, never sees a face.

The client keeps its own CKKS key set (:mod:`~veilface.client.keys`), detects, aligns and
embeds faces locally with the gallery's model (:mod:`~veilface.client.faces`), uploads only
ciphertexts (:mod:`~veilface.client.ciphertexts`, :mod:`~veilface.client.api`), and decrypts
and ranks the encrypted scores the server returns (:mod:`~veilface.client.scores`).
:class:`~veilface.client.gallery.PrivateGallery` puts them together. Nothing here imports the
server's dependencies (Flask, Celery, SQLAlchemy): ``pip install 'veilface[client]'`` suffices.
"""
