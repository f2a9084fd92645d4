"""The API under the base path: protocol adapters over one shared core.

``core/`` is what every protocol shares (HTTP request and response types, routing, body
decoding, errors, event streams, tool-call parsing, guided decoding, sampling options);
``openai/`` is OpenAI's protocol on top of it; ``app.py`` is the route table.  Nothing here
knows about ASGI or WSGI: the middleware hands the API a :class:`~.core.http.Request` and sends
back its :class:`~.core.http.Response`.
"""
