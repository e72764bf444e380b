"""The permutation groups of any network, derived from its graph.

A hidden unit may be renamed (permuted) only together with every tensor axis that carries it; the
groups of axes that must move together follow from how the network computes (Ainsworth, Hayase &
Srinivasa, "Git Re-Basin", ICLR 2023, §3; their code writes the groups by hand per architecture).
Here they are read off the network's own graph: ``torch.export`` (``strict=False``) traces
``forward`` on an example batch into an ATen-level ``torch.fx`` graph whose nodes carry their
tensors' shapes and the module they were called from (plain ``torch.fx.symbolic_trace`` cannot
follow Python that reads shapes, as timm's attention and the zoo's MLP do), and every tensor axis
of the graph becomes an element of a union-find:

- each Linear/Conv output starts a group: its output-feature axis joins the weight's rows (axis 0)
  and the bias; its input-feature axis joins the weight's columns (axis 1);
- BatchNorm, LayerNorm (and GroupNorm with one group or one channel per group) carry their input's
  group, and their weight, bias and running statistics join it; element-wise operations and
  activations carry their inputs' groups, and a broadcast addition or product merges them — so a
  residual addition merges the streams it adds, and a parameter added to or multiplying the stream
  (a positional embedding, a layer scale, a per-channel scale), or concatenated to it along the
  tokens (a class token), joins the stream's group along the axis that lines up with it;
- operations that move axes (transpose, permute, expand) or that only change the positions of the
  other axes (pooling, resizing, padding, selecting a token, concatenating tokens) carry a group
  along with its axis; reductions and softmax over a group's own axis are invariant to it;
- attention ``softmax(q kᵀ) v`` (``scaled_dot_product_attention``, matmul) merges the groups of
  q's and k's feature axes (their product sums over it) and carries v's to its output;
- a group that cannot be permuted safely is **fixed** (kept in place, permutation = identity): a
  reshape that splits or merges its axis (q/k/v split into heads and merged back; a channel ×
  spatial flatten before a Linear, whose columns would need the permutation repeated per spatial
  position), a concatenation, slice or selection along it, a grouped (not depthwise) convolution,
  and the network's inputs and outputs (class scores are never permuted). So is every axis the
  rules above do not carry (positions, tokens and heads are never permuted), and every input axis
  a rule neither carries nor sums over: the safety net under every rule;
- an operation these rules do not know is refused with one line naming it and the module that
  called it — unless nothing it touches could be permuted (e.g. the input resizing before the
  first layer), which is then fixed as well.

What remains are the groups: sets of state-dict axes not joined to anything fixed. Each is named
after the first module writing its units (e.g. ``layer1.0.conv1``); its probes for activation
matching are the inputs of the Linear/Conv modules reading it (else the outputs of those writing
it). A spec derived this way is not taken on trust: the caller proves it on data with
:func:`landscape.alignment.check_preserves_function`.

Example (a two-block MLP with a residual connection: both blocks' outputs share one group)::

    >>> import torch
    >>> from torch import nn
    >>> class Residual(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.inp, self.hidden, self.out, self.head = nn.Linear(3, 4), nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         x = self.inp(x)
    ...         return self.head(x + self.out(torch.relu(self.hidden(x))))
    >>> spec = traced_permutation_spec(Residual(), torch.randn(2, 3))
    >>> spec.sizes
    {'inp': 4, 'hidden': 6}
    >>> sorted(spec.axes["inp"])
    [('head.weight', 1), ('hidden.weight', 1), ('inp.bias', 0), ('inp.weight', 0), ('out.bias', 0), ('out.weight', 0)]
    >>> spec.fixed
    ('head.bias',)
"""
from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx import Node

from landscape.checks import evaluation_mode
from landscape.alignment import PermutationSpec
from landscape.errors import InputError

__all__ = ["traced_permutation_spec"]

_FIXED = ("fixed",)  # the one element every axis that must stay in place is joined to
_PROBE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def traced_permutation_spec(model: nn.Module, inputs: torch.Tensor) -> PermutationSpec:
    """The permutation groups of ``model``, derived from its graph traced on the batch ``inputs``
    (see the module docstring); refused with :class:`InputError` when the graph cannot be traced or
    holds an operation that cannot be placed, naming it and its module."""
    if not isinstance(inputs, torch.Tensor):
        raise InputError(f"tracing needs a batch of inputs as one tensor, got {type(inputs).__name__}")
    with evaluation_mode(model):
        try:
            program = torch.export.export(model, (inputs,), strict=False)
        except Exception as error:  # noqa: BLE001 - any failure to trace means: no graph to read groups from
            text = str(error).strip()
            reason = text.splitlines()[0][:200] if text else type(error).__name__
            raise InputError(f"cannot trace {type(model).__name__} to derive its permutation groups ({reason}); "
                             "refusing to align it") from None
    return _Tracer(model, program).spec()


class _Tracer:
    """One pass over the graph: every tensor axis an element of a union-find, every rule a union."""

    def __init__(self, model: nn.Module, program: ExportedProgram):
        self.model, self.graph = model, program.graph
        self.parent: dict = {_FIXED: _FIXED}
        self.weight: dict = {_FIXED: 1}
        self.touched: set = set()  # the elements the rule being applied has placed
        self.state: dict[str, str] = {}  # placeholder name -> state-dict key
        state_keys = set(model.state_dict())
        for spec in program.graph_signature.input_specs:
            kept = spec.kind is InputKind.PARAMETER or (spec.kind is InputKind.BUFFER and spec.persistent)
            if kept and spec.target in state_keys:
                self.state[spec.arg.name] = spec.target
        # (element, module, dim, node read or None) of every Linear/Conv/Embedding, in graph order
        self.writes: list[tuple] = []
        self.reads: list[tuple] = []
        self.calls: dict[str, int] = {}
        for node in self.graph.nodes:
            if node.op == "call_function" and _name(node) in _WRITERS:
                module = self.module_of(node)[0]
                self.calls[module] = self.calls.get(module, 0) + 1

    # -------------------------------------------------------------------- union-find over axes

    def find(self, x):
        self.parent.setdefault(x, x)
        self.weight.setdefault(x, 1)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, *elements) -> None:
        self.touched.update(elements)
        for other in elements[1:]:
            a, b = self.find(elements[0]), self.find(other)
            if a == b:
                continue
            if b == _FIXED or (a != _FIXED and self.weight[a] < self.weight[b]):
                a, b = b, a
            self.parent[b] = a
            self.weight[a] += self.weight[b]

    def fix(self, *elements) -> None:
        self.union(_FIXED, *elements)

    def invariant(self, *elements) -> None:
        """The operation's result does not change when these axes are permuted (a sum over them)."""
        self.touched.update(elements)

    # ------------------------------------------------------------------------ the graph's tensors

    def shape(self, node, index: int | None = None) -> tuple[int, ...]:
        value = node.meta["val"]
        value = value[index] if index is not None else value
        return tuple(int(size) for size in value.shape)

    def axis(self, node, axis: int, index: int | None = None):
        """The element of one axis of a node's tensor; a state-dict tensor's axes are the same
        elements wherever it is used."""
        if node.name in self.state:
            return ("state", self.state[node.name], axis)
        return ("node", node.name, index or 0, axis)

    def axes(self, node, index: int | None = None) -> list:
        return [self.axis(node, a, index) for a in range(len(self.shape(node, index)))]

    def carry(self, node, source, mapping: dict[int, int], index: int | None = None) -> None:
        """Output axis ``i`` of ``node`` is axis ``mapping[i]`` of ``source``."""
        for out_axis, in_axis in mapping.items():
            self.union(self.axis(node, out_axis, index), self.axis(source, in_axis))

    def same(self, node, source, index: int | None = None) -> None:
        self.carry(node, source, {a: a for a in range(len(self.shape(node, index)))}, index)

    def broadcast(self, node, source) -> None:
        """Right-aligned axes of equal size are one axis; a size-1 axis broadcast over a group is
        constant along it and needs no permutation."""
        out, shape = self.shape(node), self.shape(source)
        offset = len(out) - len(shape)
        for a, size in enumerate(shape):
            if a + offset >= 0 and size == out[a + offset]:
                self.union(self.axis(node, a + offset), self.axis(source, a))

    def tensors_in(self, node: Node) -> list[Node]:
        found = []
        for arg in [*node.args, *node.kwargs.values()]:
            for item in (arg if isinstance(arg, (list, tuple)) else [arg]):
                if isinstance(item, Node) and isinstance(item.meta.get("val"), torch.Tensor):
                    found.append(item)
        return found

    @staticmethod
    def outputs(node: Node) -> list[int | None]:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            return [None]
        if isinstance(value, (tuple, list)):
            return [i for i, item in enumerate(value) if isinstance(item, torch.Tensor)]
        return []

    def module_of(self, node: Node) -> tuple[str, str]:
        """``(module name, type name)`` of the innermost module whose forward made ``node``."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", type(self.model).__name__
        path, kind = list(stack.values())[-1]
        kind = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
        return path, kind.rsplit(".", 1)[-1]

    def note(self, node: Node, *, write=None, read=None, dim: int, source: Node | None = None) -> None:
        """Record a Linear/Conv/Embedding's output units (``write``) and input units (``read``):
        they name the groups and, for a plain module called once, are where activations are read."""
        module = self.module_of(node)[0]
        try:
            instance = self.model.get_submodule(module) if module else None
        except AttributeError:
            instance = None
        probe = module if (isinstance(instance, _PROBE_MODULES) and self.calls.get(module) == 1
                           and type(instance).forward in _PLAIN_FORWARDS) else None
        if write is not None:
            self.writes.append((write, module or type(self.model).__name__, probe, dim))
        if read is not None:
            self.reads.append((read, probe, dim, source.name if source is not None else None))

    # ----------------------------------------------------------------------------------- walk

    def spec(self) -> PermutationSpec:
        for node in self.graph.nodes:
            if node.op == "placeholder" or node.op == "get_attr":
                if node.name not in self.state and isinstance(node.meta.get("val"), torch.Tensor):
                    self.fix(*self.axes(node))  # inputs, constants, non-persistent buffers stay in place
            elif node.op == "call_function":
                self.visit(node)
            elif node.op == "output":
                for item in self.tensors_in(node):
                    self.fix(*self.axes(item))  # what the network returns is never permuted
        return self.collect()

    def visit(self, node: Node) -> None:
        if node.target is operator.getitem:
            source, index = node.args
            if isinstance(node.meta.get("val"), torch.Tensor):
                for a in range(len(self.shape(node))):
                    self.union(self.axis(node, a), self.axis(source, a, index))
            return
        rule = _RULES.get(_name(node))
        if rule is None:
            self.unknown(node)
            return
        self.touched = set()
        rule(self, node, _bind(node))
        # An input axis the rule neither carried nor declared invariant would be permuted under an
        # output that is not: it stays in place. An output axis no rule carried is a new position.
        self.fix(*[element for source in self.tensors_in(node) for element in self.axes(source)
                   if element not in self.touched])
        for index in self.outputs(node):
            for element in self.axes(node, index):
                if self.find(element) == element and self.weight[element] == 1:
                    self.fix(element)

    def unknown(self, node: Node) -> None:
        """An operation without a rule: harmless when everything it reads stays in place anyway
        (then so does everything it makes)."""
        if any(self.find(element) != _FIXED for item in self.tensors_in(node) for element in self.axes(item)):
            module, kind = self.module_of(node)
            where = f"module {module!r} ({kind})" if module else f"the forward of {kind}"
            raise InputError(f"cannot place {node.target} in {where} of {type(self.model).__name__} among "
                             "permutation groups; refusing to align it")
        for index in self.outputs(node):
            self.fix(*self.axes(node, index))

    # ------------------------------------------------------------------------------- results

    def collect(self) -> PermutationSpec:
        state = self.model.state_dict()
        position = {key: i for i, key in enumerate(state)}
        # a tensor shared under several names (tied weights) is traced under one: the others move with it
        names_of: dict[int, list[str]] = {}
        for key, tensor in self.model.state_dict(keep_vars=True).items():
            names_of.setdefault(id(tensor), []).append(key)
        aliases = {key: names for names in names_of.values() for key in names}
        members: dict = {}
        for key, tensor in state.items():
            for a in range(tensor.dim()):
                if ("state", key, a) in self.parent and self.find(("state", key, a)) != _FIXED:
                    members.setdefault(self.find(("state", key, a)), []).extend((name, a) for name in aliases[key])
        names: dict = {}
        for element, module, _probe, _dim in self.writes:  # named after the first module writing the units
            root = self.find(element)
            if root in members and root not in names:
                names[root] = module
        for root, pairs in members.items():
            names.setdefault(root, pairs[0][0])
        axes, probes, taken = {}, {}, set()
        for root in sorted(members, key=lambda r: list(names).index(r)):
            name = names[root]
            while name in taken:  # one module writing two groups (called twice): keep the names apart
                name += "'"
            taken.add(name)
            axes[name] = sorted(set(members[root]), key=lambda pair: (position[pair[0]], pair[1]))
            probes[name] = self.probes_of(root)
        grouped = {key for pairs in axes.values() for key, _ in pairs}
        fixed = [key for key, tensor in state.items() if tensor.is_floating_point() and key not in grouped]
        return PermutationSpec.from_axes(self.model, axes, probes, fixed)

    def probes_of(self, root) -> list[tuple[str, str, int]]:
        """The inputs of the plain Linear/Conv modules reading the group (one per tensor read),
        else the outputs of those writing it."""
        places, seen = [], set()
        for element, module, dim, source in self.reads:
            if module is not None and self.find(element) == root and source not in seen:
                seen.add(source)
                places.append((module, "input", dim))
        if not places:
            places = [(probe, "output", dim) for element, _module, probe, dim in self.writes
                      if probe is not None and self.find(element) == root]
        return places


def _name(node: Node) -> str | None:
    """``linear`` for ``aten.linear.default``; None for anything but an ATen operator (or an
    overload read differently from its name, such as ``view.dtype``)."""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None or getattr(target, "namespace", None) != "aten":
        return None
    name = schema.name.split("::")[-1]
    return None if (name, target._overloadname) in _OTHER_MEANING else name


def _bind(node: Node) -> dict:
    """The node's arguments by the names of its ATen schema, defaults filled in."""
    bound = {}
    for position, argument in enumerate(node.target._schema.arguments):
        if position < len(node.args):
            bound[argument.name] = node.args[position]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        else:
            bound[argument.name] = argument.default_value if argument.has_default_value() else None
    return bound


def _dims(dims, ndim: int) -> list[int]:
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    return [d % ndim for d in dims] if ndim else []


# ------------------------------------------------------------------------------------ the rules
# Each rule unites the elements of the axes that must carry one permutation; every output axis it
# leaves alone stays in place (see _Tracer.visit).


def _elementwise(t: _Tracer, node: Node, args: dict) -> None:
    source = args.get("self", args.get("input"))
    for index in t.outputs(node):
        t.same(node, source, index)


def _broadcasting(t: _Tracer, node: Node, args: dict) -> None:
    for source in t.tensors_in(node):
        t.broadcast(node, source)


def _nothing(t: _Tracer, node: Node, args: dict) -> None:
    """Reads only sizes, dtypes or devices (or makes a fresh tensor): nothing it makes is permuted."""
    for source in t.tensors_in(node):
        t.invariant(*t.axes(source))


def _pin(t: _Tracer, node: Node, args: dict) -> None:
    """Overwrites its input: everything it touches stays in place."""
    for source in t.tensors_in(node):
        t.fix(*t.axes(source))


def _linear(t: _Tracer, node: Node, args: dict) -> None:
    x, weight, bias = args["input"], args["weight"], args["bias"]
    last = len(t.shape(x)) - 1
    if len(t.shape(weight)) != 2:
        return t.unknown(node)
    t.union(t.axis(x, last), t.axis(weight, 1))
    t.union(t.axis(node, last), t.axis(weight, 0), *([t.axis(bias, 0)] if bias is not None else []))
    t.carry(node, x, {a: a for a in range(last)})
    t.note(node, write=t.axis(node, last), read=t.axis(x, last), dim=last, source=x)


def _convolution(t: _Tracer, node: Node, args: dict) -> None:
    x, weight, bias, groups = args["input"], args["weight"], args["bias"], args["groups"]
    name = _name(node)
    transposed = bool(args.get("transposed")) or name.startswith("conv_transpose")
    channel = len(t.shape(x)) - (len(t.shape(weight)) - 2) - 1  # 1 for a batch, 0 for one sample
    if channel == 1:
        t.union(t.axis(node, 0), t.axis(x, 0))
    reads, writes = (0, 1) if transposed else (1, 0)  # weight axes of input and output channels
    bias_axes = [t.axis(bias, 0)] if bias is not None else []
    in_channels, out_channels = t.shape(x)[channel], t.shape(node)[channel]
    if groups == 1:
        t.union(t.axis(x, channel), t.axis(weight, reads))
        t.union(t.axis(node, channel), t.axis(weight, writes), *bias_axes)
        t.note(node, write=t.axis(node, channel), read=t.axis(x, channel), dim=channel, source=x)
    elif groups == in_channels == out_channels and not transposed:  # depthwise: channel i reads channel i
        t.union(t.axis(node, channel), t.axis(x, channel), t.axis(weight, 0), *bias_axes)
        t.note(node, read=t.axis(x, channel), dim=channel, source=x)
    else:  # grouped: a unit may move only within its group of channels, which a group cannot say
        t.fix(t.axis(x, channel), t.axis(node, channel), t.axis(weight, 0), t.axis(weight, 1), *bias_axes)


def _normalized(t: _Tracer, node: Node, source: Node) -> None:
    """The normalized tensor (the first output; the others are statistics) carries every axis."""
    t.same(node, source, t.outputs(node)[0])


def _batch_norm(t: _Tracer, node: Node, args: dict) -> None:
    x = args["input"]
    _normalized(t, node, x)
    if len(t.shape(x)) >= 2:
        per_channel = [args.get(k) for k in ("weight", "bias", "running_mean", "running_var")]
        t.union(t.axis(x, 1), *[t.axis(p, 0) for p in per_channel if p is not None])


def _layer_norm(t: _Tracer, node: Node, args: dict) -> None:
    """Mean and variance over the normalized axes are invariant to permuting them; the weight and
    bias are per element of those axes."""
    x = args["input"]
    _normalized(t, node, x)
    count, ndim = len(args["normalized_shape"]), len(t.shape(x))
    for j in range(count):
        t.union(t.axis(x, ndim - count + j),
                *[t.axis(p, j) for p in (args.get("weight"), args.get("bias")) if p is not None])


def _group_norm(t: _Tracer, node: Node, args: dict) -> None:
    x = args["input"]
    _normalized(t, node, x)
    affine = [t.axis(p, 0) for p in (args.get("weight"), args.get("bias")) if p is not None]
    if args["num_groups"] in (1, t.shape(x)[1]):
        t.union(t.axis(x, 1), *affine)
    else:  # statistics over blocks of channels: a unit may not leave its block
        t.fix(t.axis(x, 1), *affine)


def _prelu(t: _Tracer, node: Node, args: dict) -> None:
    _elementwise(t, node, args)
    weight = args["weight"]
    if t.shape(weight) and t.shape(weight)[0] > 1:
        t.union(t.axis(args["self"], 1), t.axis(weight, 0))


def _spatial(count: int) -> Callable:
    """Pooling and resizing over the last ``count`` axes: the axes before them are carried."""
    def rule(t: _Tracer, node: Node, args: dict) -> None:
        source = args.get("self", args.get("input"))
        for index in t.outputs(node):
            t.carry(node, source, {a: a for a in range(len(t.shape(source)) - count)}, index)
    return rule


def _pad(t: _Tracer, node: Node, args: dict) -> None:
    """Padding: an axis padded by nothing on both sides (``pad`` lists the last axis first) is carried."""
    source, pad = args.get("self", args.get("input")), list(args["pad"])
    ndim = len(t.shape(source))
    padded = {ndim - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]}
    t.carry(node, source, {a: a for a in range(ndim) if a not in padded})


def _along(t: _Tracer, node: Node, args: dict) -> None:
    """roll and flip: the axes moved stay in place, the others are carried."""
    source = args["self"]
    moved = _dims(args["dims"], len(t.shape(source)))
    t.carry(node, source, {a: a for a in range(len(t.shape(source))) if a not in moved})
    t.fix(*[t.axis(source, a) for a in moved])


def _reduce(t: _Tracer, node: Node, args: dict) -> None:
    """A sum, mean, maximum or spread over an axis is invariant to permuting it; the other axes are carried."""
    source = args.get("self", args.get("input"))
    ndim = len(t.shape(source))
    reduced = _dims(args.get("dim"), ndim) or list(range(ndim))
    kept = [a for a in range(ndim) if a not in reduced]
    mapping = {a: a for a in kept} if args.get("keepdim") else {i: a for i, a in enumerate(kept)}
    t.carry(node, source, mapping)
    t.invariant(*[t.axis(source, a) for a in reduced])


def _reshape(t: _Tracer, node: Node, args: dict) -> None:
    """An axis is carried when it is a block of its own on both sides (row-major order keeps each
    index); an axis split or merged with others (heads, channel × spatial) stays in place."""
    source = args["self"]
    before, after = t.shape(source), t.shape(node)
    left = [a for a, size in enumerate(before) if size != 1]
    right = [a for a, size in enumerate(after) if size != 1]
    i = j = 0
    while i < len(left) and j < len(right):
        block_in, block_out = [left[i]], [right[j]]
        product_in, product_out = before[left[i]], after[right[j]]
        i, j = i + 1, j + 1
        while product_in != product_out:
            if product_in < product_out and i < len(left):
                block_in.append(left[i])
                product_in *= before[left[i]]
                i += 1
            elif j < len(right):
                block_out.append(right[j])
                product_out *= after[right[j]]
                j += 1
            else:
                break
        if len(block_in) == 1 and len(block_out) == 1:
            t.union(t.axis(node, block_out[0]), t.axis(source, block_in[0]))
        else:
            t.fix(*[t.axis(source, a) for a in block_in])
    t.fix(*[t.axis(source, a) for a in left[i:]])


def _reorder(t: _Tracer, node: Node, args: dict) -> None:
    """permute, transpose, movedim, t: output axis ``i`` is input axis ``order[i]``."""
    source = args["self"]
    ndim = len(t.shape(source))
    name = _name(node)
    order = list(range(ndim))
    if name == "permute":
        order = _dims(args["dims"], ndim)
    elif name in ("transpose", "swapaxes", "t"):
        first, second = (0, 1) if name == "t" else (args.get("dim0", args.get("axis0")), args.get("dim1", args.get("axis1")))
        if ndim >= 2:
            first, second = first % ndim, second % ndim
            order[first], order[second] = order[second], order[first]
    elif name == "movedim":
        sources, destinations = _dims(args["source"], ndim), _dims(args["destination"], ndim)
        rest = iter(a for a in range(ndim) if a not in sources)
        placed = dict(zip(destinations, sources))
        order = [placed[i] if i in placed else next(rest) for i in range(ndim)]
    t.carry(node, source, dict(enumerate(order)))


def _repeat(t: _Tracer, node: Node, args: dict) -> None:
    source, repeats = args["self"], list(args["repeats"])
    offset = len(repeats) - len(t.shape(source))
    for a in range(len(t.shape(source))):
        if repeats[a + offset] == 1:
            t.union(t.axis(node, a + offset), t.axis(source, a))
        else:
            t.fix(t.axis(source, a))


def _cat(t: _Tracer, node: Node, args: dict) -> None:
    """Concatenation: the joined axis stays in place, the others are one axis across the parts."""
    ndim = len(t.shape(node))
    dim = args["dim"] % ndim
    for part in args["tensors"]:
        if len(t.shape(part)) != ndim:  # a legacy empty 1-d part adds nothing
            continue
        t.carry(node, part, {a: a for a in range(ndim) if a != dim})
        t.fix(t.axis(part, dim))


def _stack(t: _Tracer, node: Node, args: dict) -> None:
    ndim = len(t.shape(node))
    dim = args["dim"] % ndim
    for part in args["tensors"]:
        t.carry(node, part, {(a if a < dim else a + 1): a for a in range(ndim - 1)})


def _select(t: _Tracer, node: Node, args: dict) -> None:
    """One index along ``dim`` (a token, a channel): the axis stays in place, the others are carried."""
    source = args["self"]
    ndim = len(t.shape(source))
    dim = args["dim"] % ndim
    t.carry(node, source, {i: a for i, a in enumerate(a for a in range(ndim) if a != dim)})
    t.fix(t.axis(source, dim))


def _slice(t: _Tracer, node: Node, args: dict) -> None:
    """A part along ``dim`` keeps that axis in place; the whole of it (``x[:, :]``) carries everything."""
    source = args["self"]
    ndim = len(t.shape(source))
    dim = args.get("dim", 0) % ndim
    if t.shape(node)[dim] == t.shape(source)[dim] and args.get("step", 1) == 1:
        return t.same(node, source)
    t.carry(node, source, {a: a for a in range(ndim) if a != dim})
    t.fix(t.axis(source, dim))


def _split(t: _Tracer, node: Node, args: dict) -> None:
    """unbind, split, chunk: the parts carry every other axis; the axis split stays in place."""
    source = args["self"]
    ndim = len(t.shape(source))
    dim = args.get("dim", 0) % ndim
    keeps_dim = _name(node) != "unbind"
    for index in t.outputs(node):
        mapping = ({a: a for a in range(ndim) if a != dim} if keeps_dim
                   else {i: a for i, a in enumerate(a for a in range(ndim) if a != dim)})
        t.carry(node, source, mapping, index)
    t.fix(t.axis(source, dim))


def _matmul(t: _Tracer, node: Node, args: dict) -> None:
    """``a @ b`` sums over a's last and b's second-to-last axis: one permutation of both leaves it."""
    a, b = args["self"], args.get("other", args.get("mat2"))
    na, nb, out = len(t.shape(a)), len(t.shape(b)), len(t.shape(node))
    if na < 2 or nb < 2:
        return t.unknown(node)
    t.union(t.axis(a, na - 1), t.axis(b, nb - 2))
    t.union(t.axis(node, out - 2), t.axis(a, na - 2))
    t.union(t.axis(node, out - 1), t.axis(b, nb - 1))
    for source, ndim in ((a, na), (b, nb)):  # batch axes broadcast
        for axis in range(ndim - 2):
            if t.shape(source)[axis] == t.shape(node)[axis + out - ndim]:
                t.union(t.axis(node, axis + out - ndim), t.axis(source, axis))


def _attention(t: _Tracer, node: Node, args: dict) -> None:
    """``softmax(q kᵀ / √d + mask) v``: q's and k's feature axes are summed over together, v's
    become the output's; heads, positions and the mask stay in place."""
    q, k, v = args["query"], args["key"], args["value"]
    if min(len(t.shape(q)), len(t.shape(k)), len(t.shape(v))) < 2:
        return t.unknown(node)
    t.union(t.axis(q, -1 % len(t.shape(q))), t.axis(k, -1 % len(t.shape(k))))
    t.union(t.axis(node, len(t.shape(node)) - 1), t.axis(v, len(t.shape(v)) - 1))
    for source in (q, k, v):
        t.fix(*t.axes(source)[:-1])
    if args.get("attn_mask") is not None:
        t.fix(*t.axes(args["attn_mask"]))


def _index(t: _Tracer, node: Node, args: dict) -> None:
    """``x[..., idx, ...]`` with one index tensor (a relative-position table looked up by an index
    buffer): the indexed axis stays in place, the axes before and after it are carried."""
    source, indices = args["self"], list(args["indices"])
    given = [p for p, index in enumerate(indices) if index is not None]
    if len(given) != 1:
        return t.unknown(node)
    position, index = given[0], indices[given[0]]
    extra = len(t.shape(index)) - 1
    t.carry(node, source, {a if a < position else a + extra: a
                           for a in range(len(t.shape(source))) if a != position})
    t.fix(t.axis(source, position), *t.axes(index))


def _embedding(t: _Tracer, node: Node, args: dict) -> None:
    weight = args["weight"]
    t.union(t.axis(node, len(t.shape(node)) - 1), t.axis(weight, 1))
    t.fix(t.axis(weight, 0))
    t.note(node, write=t.axis(node, len(t.shape(node)) - 1), dim=len(t.shape(node)) - 1)


_WRITERS = {"linear", "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "embedding"}
_PLAIN_FORWARDS = {kind.forward for kind in _PROBE_MODULES}
_OTHER_MEANING = {("view", "dtype")}  # a view of the bytes as another dtype, not a reshape

_RULES: dict[str, Callable] = {
    **dict.fromkeys(("relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh",
                     "tanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_",
                     "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "softplus", "mish",
                     "mish_", "neg", "exp", "log", "abs", "sqrt", "rsqrt", "square", "erf", "sin", "cos",
                     "reciprocal", "sign", "floor", "ceil", "round", "trunc", "logical_not", "nan_to_num",
                     "log1p", "expm1", "dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout",
                     "native_dropout", "contiguous", "clone", "detach", "alias", "lift_fresh_copy", "_to_copy", "to",
                     "type_as", "softmax", "_softmax", "log_softmax", "_log_softmax"), _elementwise),
    **dict.fromkeys(("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "maximum", "minimum",
                     "fmax", "fmin", "remainder", "floor_divide", "pow", "where", "masked_fill", "masked_fill_", "eq",
                     "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "addcmul", "addcdiv",
                     "lerp", "clamp", "clamp_", "clamp_min", "clamp_max", "hypot", "atan2", "copy_", "expand",
                     "expand_as", "broadcast_to"), _broadcasting),
    **dict.fromkeys(("sym_size", "sym_numel", "sym_stride", "_assert_tensor_metadata", "_assert_scalar",
                     "_assert_async", "zeros", "ones", "full", "empty", "arange", "scalar_tensor", "new_zeros",
                     "new_ones", "new_empty", "new_full", "zeros_like", "ones_like", "empty_like",
                     "full_like"), _nothing),
    **dict.fromkeys(("fill_", "zero_"), _pin),
    "linear": _linear,
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d"), _convolution),
    **dict.fromkeys(("batch_norm", "_native_batch_norm_legit_no_training"), _batch_norm),
    **dict.fromkeys(("layer_norm", "native_layer_norm", "rms_norm"), _layer_norm),
    "group_norm": _group_norm,
    "prelu": _prelu,
    **dict.fromkeys(("max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d",
                     "upsample_nearest1d", "upsample_linear1d"), _spatial(1)),
    **dict.fromkeys(("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
                     "adaptive_max_pool2d", "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d",
                     "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"), _spatial(2)),
    **dict.fromkeys(("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d",
                     "upsample_nearest3d", "upsample_trilinear3d"), _spatial(3)),
    **dict.fromkeys(("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
                     "replication_pad1d", "replication_pad2d", "replication_pad3d"), _pad),
    **dict.fromkeys(("roll", "flip"), _along),
    **dict.fromkeys(("mean", "sum", "amax", "amin", "var", "std", "logsumexp", "linalg_vector_norm"), _reduce),
    **dict.fromkeys(("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
                     "reshape_as"), _reshape),
    **dict.fromkeys(("permute", "transpose", "swapaxes", "t", "movedim"), _reorder),
    "repeat": _repeat,
    "cat": _cat,
    "stack": _stack,
    "select": _select,
    **dict.fromkeys(("slice", "narrow"), _slice),
    **dict.fromkeys(("unbind", "split", "split_with_sizes", "chunk"), _split),
    **dict.fromkeys(("matmul", "mm", "bmm"), _matmul),
    "scaled_dot_product_attention": _attention,
    "embedding": _embedding,
    "index": _index,
}
