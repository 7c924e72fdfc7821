"""The built-in V2G PKI (OCPP security profiles 2 and 3): a root CA, a CPO sub-CA, station and server certificates,
revocation and the CRL.

``storage`` keeps CA private keys behind the small ``KeyStore`` interface (encrypted PEM files today; a PKCS#11/HSM
store can implement the same interface); ``ca`` creates the CAs; ``issue`` issues, records and revokes certificates
and builds the CRL; ``verify`` checks a client certificate at the OCPP handshake.
"""
