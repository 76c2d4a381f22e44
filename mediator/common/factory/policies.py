"""Policies: recipes that say how to turn an object into a handler."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Type, Union

__all__ = ["MappablePolicy", "CallableHandlerPolicy", "MethodHandlerPolicy", "PolicyType"]


class MappablePolicy:
    """Base of policies; ``replace_map`` lets a one-off policy patch a configured one."""

    def replace_map(self, policy: "MappablePolicy") -> "MappablePolicy":
        """This policy with ``policy`` applied; the base keeps itself."""
        return self


@dataclass
class CallableHandlerPolicy(MappablePolicy):
    """Use the object itself, an async callable, as the handler.

    ``subject_arg`` names the subject parameter (and passes the subject by name);
    ``arg_map`` renames injected kwargs (injected name -> parameter name);
    ``arg_strict=True`` passes every injected kwarg, not only those the handler names.
    """

    subject_arg: Optional[str] = None
    arg_map: Dict[str, str] = field(default_factory=dict)
    arg_strict: bool = False

    @property
    def subject_as_keyword(self) -> bool:
        """Whether the subject is always passed by name."""
        return bool(self.subject_arg)

    def replace_map(self, policy: MappablePolicy) -> MappablePolicy:
        return policy if isinstance(policy, CallableHandlerPolicy) else self


@dataclass
class MethodHandlerPolicy(MappablePolicy):
    """Use the attribute ``name`` of the object (usually a method) as the handler.

    ``policy`` inspects that attribute; with ``subtype_of`` only instances of those
    classes are compatible.
    """

    name: str
    policy: CallableHandlerPolicy = field(default_factory=CallableHandlerPolicy)
    subtype_of: List[Type] = field(default_factory=list)

    @property
    def precises_type(self) -> bool:
        """Whether the object's type is checked."""
        return bool(self.subtype_of)

    def replace_map(self, policy: MappablePolicy) -> MappablePolicy:
        if isinstance(policy, CallableHandlerPolicy):
            return MethodHandlerPolicy(name=self.name, policy=policy, subtype_of=self.subtype_of)
        if isinstance(policy, MethodHandlerPolicy):
            return policy
        return self


PolicyType = Union[CallableHandlerPolicy, MethodHandlerPolicy, MappablePolicy]
