"""S/MIME: signing, verification and encryption of messages (RFC 8551).

Modules: ``pki`` (trust anchors, CRLs, path validation), ``sign``, ``verify`` (plus
Authentication-Results), ``encrypt``, ``keys`` (PKCS#12/PEM identities, private keys sealed at rest)
and ``mime`` (byte-exact MIME handling shared by the others).
"""
