"""A host function offered to the model as a tool: its name, description and JSON Schema, and how to call it.

The name is the function's, the description its docstring, the schema its type hints
(:mod:`.signature`); :class:`Tool` (or the :func:`tool` decorator) overrides any of the three.
Synchronous functions run on a thread pool of the tools' own, never on the event loop nor on the
thread pools the host's code or the API's request work use; async ones are awaited.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Any, overload

from ..request_info import RequestInfo
from ..runtime.cpu_pool import CPUPool
from ..runtime.hooks import is_async
from .signature import ArgumentsError, request_parameter_of, signature_of

#: OpenAI's rule for function names.
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Where synchronous tools run: a slow or stuck tool holds one of these threads, never the API's own
#: pool for request work (``runtime.cpu_pool``) nor asyncio's default executor.
tool_pool = CPUPool(16, name="llm-tool")


class ToolError(Exception):
    """Raise it from a tool to tell the model what went wrong: its message becomes the tool's result.

    Any other exception gives the model only that the tool failed (the exception is logged), since what
    the model reads may reach the client.
    """


class Tool:
    """A function the model may call, run by the server.

    ``Tool(fn)`` takes the name from ``fn.__name__``, the description from its docstring and the
    parameters' JSON Schema from its type hints; ``name``, ``description`` and ``parameters`` (a JSON
    Schema object) override them.  With ``parameters`` given, the model's arguments are passed to ``fn``
    as keywords unchecked by type (the schema still steers the model); otherwise they are checked
    against the type hints first, and a mismatch is answered to the model.  A parameter annotated
    :class:`~llm_middleware.RequestInfo` receives the caller's request (``None`` outside an HTTP request).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a tool must be callable, got {fn!r}")
        self.fn = fn
        self.name = name if name is not None else getattr(fn, "__name__", "")
        if not NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1 to 64 letters, digits, '_' or '-'")
        self.description = description if description is not None else inspect.getdoc(fn) or ""
        self.is_async = is_async(fn)
        if parameters is None:
            self._signature = signature_of(fn, self.name)
            self.parameters = self._signature.schema
            self._request_parameter = self._signature.request_parameter
        else:
            if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
                raise ValueError(f"tool {self.name!r}: parameters must be a JSON Schema of type 'object'")
            self._signature = None
            self.parameters = parameters
            self._request_parameter = request_parameter_of(fn)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def keywords(self, arguments: str, info: RequestInfo | None) -> dict[str, Any]:
        """The keyword arguments of a call from the model's JSON ``arguments`` (:class:`ArgumentsError` if unfit)."""
        if self._signature is not None:
            keywords = self._signature.keywords(arguments)
        else:
            try:
                keywords = json.loads(arguments or "{}")
            except ValueError:
                raise ArgumentsError("the arguments are not valid JSON") from None
            if not isinstance(keywords, dict):
                raise ArgumentsError("the arguments must be a JSON object")
        if self._request_parameter is not None:
            keywords[self._request_parameter] = info
        return keywords

    async def invoke(self, arguments: str, info: RequestInfo | None) -> Any:
        """Call the function with the model's ``arguments`` and return what it returns."""
        keywords = self.keywords(arguments, info)
        if self.is_async:
            return await self.fn(**keywords)
        # Cancelling the caller drops the result; the thread finishes the call on its own.
        return await tool_pool.run(self.fn, **keywords)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, parameters: dict[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a :class:`Tool`, as ``@tool`` or ``@tool(name=..., description=..., parameters=...)``."""
    if fn is not None:
        return Tool(fn, name=name, description=description, parameters=parameters)
    return lambda function: Tool(function, name=name, description=description, parameters=parameters)


def as_tool(item: Tool | Callable[..., Any]) -> Tool:
    """``item`` as a :class:`Tool` (a plain callable is wrapped)."""
    return item if isinstance(item, Tool) else Tool(item)
