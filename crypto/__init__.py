"""Small typed cryptographic primitives: identities and envelopes (PyNaCl), domain-separated
hashing, update encodings and the CKKS backend (TenSEAL)."""
