"""The gRPC edge: one servicer module per service (``recommender``, ``engagement``,
``profiles``, ``campaigns``), the interceptors, security (keys, TLS), the request checks
shared by the servicers (``rpc``) and the server's wiring and supervisor (``server``).

Servicers check and translate requests and call the core (``service/``: ranking, send
time, identity, campaigns, the store); nothing in the core imports from here.
"""
