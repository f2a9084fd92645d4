"""msgspec Structs for every request and response body of OpenAI's protocol, a module per route.

Request Structs accept unknown fields (clients send vendor extras) and validate types and the
lengths of lists (:mod:`...core.limits`) only; range checks belong to the engine's sampling
parameters.  Response Structs encode in the field order OpenAI uses; fields typed
``... | UnsetType`` are left out of the JSON while unset, which is how optional keys such as
``tool_calls`` or ``usage`` disappear.
"""
