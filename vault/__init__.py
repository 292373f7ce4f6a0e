"""The vault: master keys, one data key per user, and the one place that seals or opens.

`vault.crypto` is the pure envelope encryption (bytes in, bytes out, no Django);
`vault.models.DataKey` holds each user's wrapped data key; `vault.services` opens it and gives
every app above an `OwnerCipher` to seal and open that user's values with.
"""
