"""Serving past one process: the engine as a Ray Serve deployment, adapters routed by affinity.

``pip install adapterhub[ray]``. An ingress deployment (``ingress``) reads each request's ``model``,
resolves it to the adapter version's digest and hands the request to the engine deployment
(``replica``) with that digest as Ray Serve's multiplexed model id, so Ray's router sends it to a
replica that already holds the adapter. Each replica runs the same Flask app ``adapterhub serve``
runs (``forwarding`` calls it in-process), so the OpenAI layer exists once. ``app`` builds the
application (also for ``serve run`` / ``serve deploy``); ``launch`` is what ``adapterhub serve
--replicas`` runs. Nothing here is imported by the plain server.
"""
