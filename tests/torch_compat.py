"""kiln against PyTorch on the same networks (run by CTest when python3-torch is installed).

1. Gradients: `kiln grad` (compiled and reference runtime) at parameters and inputs written by
   PyTorch equals the loss and every parameter gradient of the equivalent torch.nn module.
2. Checkpoints: a trainer built by `kiln build` saves a safetensors file that loads into the
   equivalent module with load_state_dict(strict=True), and the loaded module classifies the
   test images exactly as the trainer reported.
3. Second order: `kiln hvp` (forward over reverse) equals PyTorch's Hessian-vector product by
   double backward, and `kiln jvp` the directional derivatives of the loss and (evaluation
   mode) of the logits from torch.autograd.functional.jvp, along the same random direction.
4. Optimizers and regularizers: five steps of `kiln train` (both runtimes) on a small quadratic
   with its data in the model file end at the parameters torch.optim reaches from the same start
   with the same optimizer, penalty and max-norm projection.
5. AdamW, gradient clipping and learning-rate schedules: six steps on the same quadratic, with
   the parameters and the learning rate after every step (from resumable checkpoints) against
   torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ / clip_grad_value_ and
   torch.optim.lr_scheduler stepped once per step (each step of a model whose data is in the
   file is an epoch).
6. ONNX: the seed CNN exported by torch.onnx.export (training mode, symbolic batch) and imported
   by kiln has PyTorch's initial values under PyTorch's names, and its loss and gradients agree
   with the module's.

Usage: torch_compat.py KILN_BINARY SOURCE_DIR
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.stateless import functional_call

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from torch_peer import MLP, MnistCNN, split  # noqa: E402  the peer networks, defined once

KILN, SRC = sys.argv[1], sys.argv[2]
DATA = "/usr/share/datasets/fashion-mnist"
DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int32: "I32", torch.int64: "I64"}
NP = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32, "I64": torch.int64}


def save_safetensors(path, tensors):
    """A minimal safetensors writer, independent of kiln's."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n, = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[8 + n + a:8 + n + b]), dtype=NP[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def run(*args):
    r = subprocess.run([KILN, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"kiln {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


failures = 0


def close(what, a, b, rtol, atol):
    global failures
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    ok = err <= atol + rtol * scale
    print(f"{'ok  ' if ok else 'FAIL'} {what:28s} max|diff| {err:.3g}  (scale {scale:.3g})")
    failures += not ok


def check_gradients(model_name, module, batch, tmp):
    torch.manual_seed(3)
    for p in module.parameters():  # move away from the init so biases matter too
        p.data.add_(0.05 * torch.randn_like(p))
    images = torch.rand(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,), dtype=torch.int32)
    params = {k: v for k, v in module.state_dict().items()}
    save_safetensors(f"{tmp}/p.safetensors", params)
    save_safetensors(f"{tmp}/i.safetensors", {"image": images, "label": labels})
    module.train()
    module.zero_grad()
    loss = F.cross_entropy(module(images), labels.long())
    loss.backward()
    model = os.path.join(SRC, "examples", model_name + ".kiln")
    for runtime in ("compiled", "reference"):
        out = f"{tmp}/g_{runtime}.safetensors"
        run("grad", model, "--params", f"{tmp}/p.safetensors", "--inputs", f"{tmp}/i.safetensors",
            "-o", out, "--runtime", runtime)
        g = load_safetensors(out)
        close(f"{model_name} {runtime} loss", g["loss"].double(), loss.detach().double(), 1e-5, 1e-6)
        # A conv bias before batch norm has a true gradient of 0: kiln computes exactly 0
        # (opt.c cancels the shift), PyTorch f32 rounding noise of ~1e-6; hence atol 1e-5.
        for name, p in module.named_parameters():
            close(f"{model_name} {runtime} {name}", g[name].double(), p.grad.double(), 1e-3, 1e-5)


def against_torch(tmp, model, what, loss, grads, tol):
    """kiln grad of model on tmp's p/i.safetensors under both runtimes: the loss and every
    gradient named in grads (parameter name -> torch's) within tol, relative and absolute."""
    for runtime in ("compiled", "reference"):
        out = f"{tmp}/g_{runtime}.safetensors"
        run("grad", model, "--params", f"{tmp}/p.safetensors", "--inputs",
            f"{tmp}/i.safetensors", "-o", out, "--runtime", runtime)
        g = load_safetensors(out)
        close(f"{what} {runtime[:3]} value", g["loss"].double(), loss.detach(), tol, tol)
        for name, want in grads.items():
            close(f"{what} {runtime[:3]} d {name}", g[name].double(), want, tol, tol)


# The elementwise toolbox against torch, value and gradient in float64, at points that include
# the corners of each definition: 0, ties of min/max, both clamp bounds, softplus's threshold.
XS = [-3.0, -1.0, -0.4, 0.0, 0.0, 0.3, 0.4, 1.0, 2.5, 20.0, 21.0, -0.5, 0.7]
YS = [-3.0, 0.5, -0.4, 0.0, 1.0, -2.0, 0.4, 1.0, 3.0, 19.0, 22.0, -0.5, -0.7]
ELEMENTWISE = [
    ("sin(x)", lambda x, y: torch.sin(x)),
    ("cos(x)", lambda x, y: torch.cos(x)),
    ("tan(x)", lambda x, y: torch.tan(x)),
    ("atan(x)", lambda x, y: torch.atan(x)),
    ("erf(x)", lambda x, y: torch.erf(x)),
    ("abs(x)", lambda x, y: torch.abs(x)),
    ("sign(x)", lambda x, y: torch.sign(x)),
    ("step(x)", lambda x, y: (x > 0).double()),
    ("softplus(x)", lambda x, y: F.softplus(x)),
    ("gelu(x)", lambda x, y: F.gelu(x)),
    ("elu(x)", lambda x, y: F.elu(x)),
    ("elu(x, alpha=0.5)", lambda x, y: F.elu(x, alpha=0.5)),
    ("clamp(x, min=-0.4, max=0.4)", lambda x, y: torch.clamp(x, -0.4, 0.4)),
    ("clamp(x, min=0)", lambda x, y: torch.clamp(x, min=0)),
    ("clamp(x, max=1)", lambda x, y: torch.clamp(x, max=1)),
    ("max(x, y)", lambda x, y: torch.maximum(x, y)),
    ("min(x, y)", lambda x, y: torch.minimum(x, y)),
    ("max(x, 0.4)", lambda x, y: torch.maximum(x, torch.tensor(0.4, dtype=torch.float64))),
]


def check_elementwise(tmp):
    n = len(XS)
    weights = [0.5 + 0.1 * i for i in range(n)]
    for text, fn in ELEMENTWISE:
        model = f"{tmp}/ew.kiln"
        with open(model, "w") as f:
            f.write(f"const c: f64[1, {n}] = [{weights}]\n"
                    f"param x: f64[1, {n}] = 0\nparam y: f64[1, {n}] = 0\n"
                    f"loss = sum({text} * c) + 0 * sum(y)\nminimize loss\n")
        x = torch.tensor([XS], dtype=torch.float64, requires_grad=True)
        y = torch.tensor([YS], dtype=torch.float64, requires_grad=True)
        loss = (fn(x, y) * torch.tensor([weights], dtype=torch.float64)).sum() + 0 * y.sum()
        loss.backward()
        dx = x.grad if x.grad is not None else torch.zeros_like(x)  # step: no graph in torch
        save_safetensors(f"{tmp}/p.safetensors", {"x": x.detach(), "y": y.detach()})
        save_safetensors(f"{tmp}/i.safetensors", {})
        against_torch(tmp, model, text, loss, {"x": dx, "y": y.grad}, 1e-12)


# Losses built on indexing, against torch: x = s * w with w a parameter, so the gradient runs
# through gather (and its adjoint) into w.
LOSSES = [
    ("nll(log_softmax(x), label)", lambda x, t: F.nll_loss(F.log_softmax(x, 1), t)),
    ("hinge(x, label)", lambda x, t: F.multi_margin_loss(x, t)),
    ("hinge(x, label, margin=0.5)", lambda x, t: F.multi_margin_loss(x, t, margin=0.5)),
    ("sum(one_hot(label, 5, f64) * x ^ 2)", lambda x, t: (F.one_hot(t, 5) * x ** 2).sum()),
    ("sum(gather(x, 1, idx) ^ 3)", lambda x, t: (torch.gather(x, 1, IDX.long()) ** 3).sum()),
    ("sum(maxout(x[:, 0:4], 2) ^ 2)",
     lambda x, t: (x[:, 0:4].reshape(-1, 2, 2).max(dim=2).values ** 2).sum()),
    ("sum(x[:, 1:4] ^ 2) + sum(x[:, -2:] ^ 3)",
     lambda x, t: (x[:, 1:4] ** 2).sum() + (x[:, -2:] ** 3).sum()),
]
IDX = torch.tensor([[4, 0], [1, 1], [3, 2], [0, 4]], dtype=torch.int32)


def check_losses(tmp):
    torch.manual_seed(5)
    s = torch.randn(4, 5, dtype=torch.float64)
    label = torch.tensor([1, 0, 4, 2], dtype=torch.int32)
    w0 = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    save_safetensors(f"{tmp}/p.safetensors", {"w": w0})
    save_safetensors(f"{tmp}/i.safetensors", {"s": s, "label": label, "idx": IDX})
    for text, fn in LOSSES:
        model = f"{tmp}/loss.kiln"
        with open(model, "w") as f:
            f.write("input s: f64[B, 5]\ninput label: i32[B]\ninput idx: i32[B, 2]\n"
                    f"param w: f64[5] = 1\nx = s * w\nloss = {text}\nminimize loss\n")
        w = w0.clone().requires_grad_(True)
        loss = fn(s * w, label.long())
        loss.backward()
        against_torch(tmp, model, text[:28], loss, {"w": w.grad}, 1e-12)


CONV1D = [  # (kiln call, torch module args, then the pool applied after it)
    ("conv1d(s, out=3, kernel=3, pad=1) as c", dict(kernel_size=3, padding=1),
     "maxpool1d(h, kernel=2)", lambda h: F.max_pool1d(h, 2)),
    ("conv1d(s, out=3, kernel=4, stride=2, dilation=2) as c",
     dict(kernel_size=4, stride=2, dilation=2),
     "avgpool1d(h, kernel=3, stride=2, pad=1, count_include_pad=false)",
     lambda h: F.avg_pool1d(h, 3, 2, 1, count_include_pad=False)),
    ("conv1d(s, out=4, kernel=3, pad=same, groups=2) as c",
     dict(kernel_size=3, padding="same", groups=2),
     "maxpool1d(h, kernel=3, stride=2, pad=1, dilation=2)",
     lambda h: F.max_pool1d(h, 3, 2, 1, dilation=2)),
]


def check_conv1d(tmp):
    torch.manual_seed(6)
    s = torch.randn(3, 2, 11, dtype=torch.float64)
    save_safetensors(f"{tmp}/i.safetensors", {"s": s})
    for call, args, pool, tpool in CONV1D:
        out = int(call.split("out=")[1].split(",")[0])
        conv = torch.nn.Conv1d(2, out, dtype=torch.float64, **args)
        save_safetensors(f"{tmp}/p.safetensors",
                         {"c.weight": conv.weight.detach(), "c.bias": conv.bias.detach()})
        model = f"{tmp}/c1.kiln"
        with open(model, "w") as f:
            f.write(f"input s: f64[B, 2, 11]\nh = {call}\nloss = sum({pool} ^ 2)\n"
                    "minimize loss\n")
        loss = (tpool(conv(s)) ** 2).sum()
        loss.backward()
        against_torch(tmp, model, call[7:30], loss,
                      {"c.weight": conv.weight.grad, "c.bias": conv.bias.grad}, 1e-12)


# Convolutions with a given kernel (a parameter here, so its gradient is checked too): conv is
# F.conv2d; convolve is the true convolution, F.conv2d with the kernel flipped in both axes.
GIVEN_KERNELS = [
    ("conv(s, k)", 2, {}, False),
    ("conv(s, k, stride=2, pad=1)", 2, {"stride": 2, "padding": 1}, False),
    ("conv(s, k, groups=2, dilation=[2, 1])", 1, {"groups": 2, "dilation": (2, 1)}, False),
    ("convolve(s, k)", 2, {}, True),
    ("convolve(s, k, pad=full)", 2, {"padding": (2, 1)}, True),
    ("convolve(s, k, pad=same, dilation=2)", 2, {"padding": "same", "dilation": 2}, True),
]


def check_given_kernels(tmp):
    torch.manual_seed(8)
    s = torch.randn(3, 2, 7, 6, dtype=torch.float64)
    save_safetensors(f"{tmp}/i.safetensors", {"s": s})
    for call, cin, args, flip in GIVEN_KERNELS:
        k = torch.randn(4, cin, 3, 2, dtype=torch.float64, requires_grad=True)
        save_safetensors(f"{tmp}/p.safetensors", {"k": k.detach()})
        model = f"{tmp}/gk.kiln"
        with open(model, "w") as f:
            f.write(f"input s: f64[B, 2, 7, 6]\nparam k: f64[4, {cin}, 3, 2]\nh = {call}\n"
                    "loss = sum(h ^ 2)\nminimize loss\n")
        loss = (F.conv2d(s, torch.flip(k, [2, 3]) if flip else k, **args) ** 2).sum()
        loss.backward()
        against_torch(tmp, model, call, loss, {"k": k.grad}, 1e-12)


def check_untied_bias(tmp):
    """bias=untied: nn.Conv2d without bias plus a parameter [out, Ho, Wo] (seed 001)."""
    torch.manual_seed(9)
    s = torch.randn(3, 2, 7, 6, dtype=torch.float64)
    conv = torch.nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False, dtype=torch.float64)
    b = torch.randn(4, 4, 3, dtype=torch.float64, requires_grad=True)
    save_safetensors(f"{tmp}/i.safetensors", {"s": s})
    save_safetensors(f"{tmp}/p.safetensors", {"c.weight": conv.weight.detach(), "c.bias": b.detach()})
    model = f"{tmp}/ub.kiln"
    with open(model, "w") as f:
        f.write("input s: f64[B, 2, 7, 6]\n"
                "h = conv2d(s, out=4, kernel=3, stride=2, pad=1, bias=untied) as c\n"
                "loss = sum(tanh(h) ^ 2)\nminimize loss\n")
    loss = (torch.tanh(conv(s) + b) ** 2).sum()
    loss.backward()
    against_torch(tmp, model, "conv2d bias=untied", loss,
                  {"c.weight": conv.weight.grad, "c.bias": b.grad}, 1e-12)


def check_groupnorm(tmp):
    torch.manual_seed(7)
    for shape, groups in (((3, 4, 3, 2), 2), ((2, 6, 5), 3), ((4, 6), 6)):
        s = torch.randn(*shape, dtype=torch.float64)
        gn = torch.nn.GroupNorm(groups, shape[1], dtype=torch.float64)
        with torch.no_grad():
            gn.weight.copy_(torch.linspace(0.5, 2, shape[1]))
            gn.bias.copy_(torch.linspace(-1, 1, shape[1]))
        save_safetensors(f"{tmp}/i.safetensors", {"s": s})
        save_safetensors(f"{tmp}/p.safetensors",
                         {"gn.weight": gn.weight.detach(), "gn.bias": gn.bias.detach()})
        dims = ", ".join(str(d) for d in shape[1:])
        model = f"{tmp}/gn.kiln"
        with open(model, "w") as f:
            f.write(f"input s: f64[B, {dims}]\nh = groupnorm(s * s + s, {groups}) as gn\n"
                    "loss = sum(h ^ 3)\nminimize loss\n")
        loss = (gn(s * s + s) ** 3).sum()
        loss.backward()
        against_torch(tmp, model, f"groupnorm {list(shape)}/{groups}", loss,
                      {"gn.weight": gn.weight.grad, "gn.bias": gn.bias.grad}, 1e-11)


def check_second_order(model_name, module, batch, tmp):
    torch.manual_seed(4)
    for p in module.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    images = torch.rand(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,), dtype=torch.int32)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    names = [n for n, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]
    direction = {n: torch.randn_like(p) for n, p in zip(names, params)}
    save_safetensors(f"{tmp}/p.safetensors", state)
    save_safetensors(f"{tmp}/i.safetensors", {"image": images, "label": labels})
    save_safetensors(f"{tmp}/t.safetensors", direction)
    module.train()
    loss = F.cross_entropy(module(images), labels.long())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * direction[n]).sum() for g, n in zip(grads, names))
    hv = dict(zip(names, torch.autograd.grad(dot, params)))
    # Evaluation mode with the running statistics kiln was given (the train-mode call above
    # moved the module's own).
    module.eval()
    buffers = {k: v for k, v in state.items() if k not in direction}
    out, jout = torch.autograd.functional.jvp(
        lambda *ps: functional_call(module, {**dict(zip(names, ps)), **buffers}, (images,)),
        tuple(p.detach() for p in params), tuple(direction[n] for n in names))
    model = os.path.join(SRC, "examples", model_name + ".kiln")
    args = ["--params", f"{tmp}/p.safetensors", "--inputs", f"{tmp}/i.safetensors",
            "--tangents", f"{tmp}/t.safetensors"]
    for runtime in ("compiled", "reference"):
        h = f"{tmp}/h_{runtime}.safetensors"
        run("hvp", model, *args, "-o", h, "--runtime", runtime)
        h = load_safetensors(h)
        close(f"{model_name} {runtime} hvp loss", h["loss"].double(), loss.detach().double(),
              1e-5, 1e-6)
        scale = max(t.abs().max().item() for t in hv.values())
        for name in names:  # judged on the largest H v entry (conv biases before batch norm:
            # exactly 0 in kiln, rounding noise in PyTorch)
            close(f"{model_name} {runtime} H v {name}", h[name].double(), hv[name].double(),
                  2e-3, 1e-5 * scale)
        j = f"{tmp}/j_{runtime}.safetensors"
        run("jvp", model, *args, "-o", j, "--runtime", runtime)
        j = load_safetensors(j)
        close(f"{model_name} {runtime} jvp.loss", j["jvp.loss"].double(),
              dot.detach().double().reshape(j["jvp.loss"].shape), 1e-4, 1e-6)
        close(f"{model_name} {runtime} output", j["output"].double(), out.double(), 1e-4, 1e-5)
        close(f"{model_name} {runtime} jvp.output", j["jvp.output"].double(), jout.double(),
              1e-3, 1e-5)


OPT_X = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-1.0, 2.0, 1.0], [0.0, 1.0, -2.0]]
OPT_Y = [[1.0, -1.0], [0.5, 2.0], [-1.5, 0.0], [2.0, 1.0]]
OPT_W = [[0.3, -0.7], [0.9, 0.1], [-0.4, 0.6]]
OPT_B = [0.2, -0.1]


def l1(w):
    return w.abs().sum()


def l2(w):
    return 0.5 * (w * w).sum()


# (kiln train block, torch optimizer factory, penalty on w, max-norm c or None)
OPTIMIZERS = [
    ("optimizer = sgd(lr=0.05)", lambda p: torch.optim.SGD(p, lr=0.05), None, None),
    ("optimizer = sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.01)",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     None, None),
    ("optimizer = adam(lr=0.05, beta1=0.8, weight_decay=0.01)",
     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.999), weight_decay=0.01), None, None),
    ("optimizer = adagrad()", lambda p: torch.optim.Adagrad(p), None, None),
    ("optimizer = adagrad(lr=0.1, lr_decay=0.05, weight_decay=0.01, "
     "initial_accumulator_value=0.2, eps=1e-9)",
     lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.05, weight_decay=0.01,
                                   initial_accumulator_value=0.2, eps=1e-9), None, None),
    ("optimizer = rmsprop()", lambda p: torch.optim.RMSprop(p), None, None),
    ("optimizer = rmsprop(lr=0.02, alpha=0.9, weight_decay=0.01, momentum=0.9, centered=true)",
     lambda p: torch.optim.RMSprop(p, lr=0.02, alpha=0.9, weight_decay=0.01, momentum=0.9,
                                   centered=True), None, None),
    ("optimizer = rmsprop(momentum=0.5)", lambda p: torch.optim.RMSprop(p, momentum=0.5),
     None, None),
    ("optimizer = adadelta()", lambda p: torch.optim.Adadelta(p), None, None),
    ("optimizer = adadelta(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.01)",
     lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.01), None, None),
    ("optimizer = sgd(lr=0.05) regularize = l2(0.3)", lambda p: torch.optim.SGD(p, lr=0.05),
     lambda w: 0.3 * l2(w), None),
    ("optimizer = sgd(lr=0.05) regularize = l1(0.2)", lambda p: torch.optim.SGD(p, lr=0.05),
     lambda w: 0.2 * l1(w), None),
    ("optimizer = adam(lr=0.05) regularize = elastic_net(l1=0.2, l2=0.3)",
     lambda p: torch.optim.Adam(p, lr=0.05), lambda w: 0.2 * l1(w) + 0.3 * l2(w), None),
    ("optimizer = sgd(lr=0.2, momentum=0.9) regularize = max_norm(0.8)",
     lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), None, 0.8),
    ("optimizer = rmsprop(lr=0.05) regularize = [l2(0.1), max_norm(0.7)]",
     lambda p: torch.optim.RMSprop(p, lr=0.05), lambda w: 0.1 * l2(w), 0.7),
]


def check_optimizers(tmp):
    """Five steps of every optimizer and regularizer on loss = mean((x w + b − y)²)."""
    x, y = torch.tensor(OPT_X, dtype=torch.float64), torch.tensor(OPT_Y, dtype=torch.float64)
    for i, (block, make, penalty, max_norm) in enumerate(OPTIMIZERS):
        w = torch.tensor(OPT_W, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(OPT_B, dtype=torch.float64, requires_grad=True)
        opt = make([w, b])
        for _ in range(5):
            opt.zero_grad()
            loss = ((x @ w + b - y) ** 2).mean()
            if penalty:
                loss = loss + penalty(w)  # w is [3, 2]: a weight; b is a bias
            loss.backward()
            opt.step()
            if max_norm:  # each slice w[i, :] onto the ball of radius c
                with torch.no_grad():
                    norms = w.norm(dim=1, keepdim=True)
                    w.mul_(max_norm / norms.clamp(min=max_norm))
        model = f"{tmp}/opt{i}.kiln"
        with open(model, "w") as f:
            f.write(f"const x: f64[4, 3] = {OPT_X}\nconst y: f64[4, 2] = {OPT_Y}\n"
                    f"param w: f64[3, 2] = {OPT_W}\nparam b: f64[2] = {OPT_B}\n"
                    "loss = mean((matmul(x, w) + b - y) ^ 2)\nminimize loss\n"
                    f"train {{ {block} }}\n")
        run("check", model)
        for runtime in ("reference", "compiled"):
            out = f"{tmp}/opt{i}_{runtime}.safetensors"
            run("train", model, "--runtime", runtime, "--epochs", "5", "--save", out, "--quiet")
            got = load_safetensors(out)
            close(f"{block[12:40]} {runtime[:3]} w", got["w"], w.detach(), 1e-10, 1e-12)
            close(f"{block[12:40]} {runtime[:3]} b", got["b"], b.detach(), 1e-10, 1e-12)


L = torch.optim.lr_scheduler


def warmup_then(opt, n, then):
    """warmup = n before a schedule: LinearLR(start_factor=1/n, total_iters=n−1), then the
    schedule from its own epoch 0 (SequentialLR's milestone)."""
    return L.SequentialLR(opt, [L.LinearLR(opt, start_factor=1 / n, total_iters=n - 1),
                                then(opt)], milestones=[n])


def clip_norm(c):
    return lambda ps: torch.nn.utils.clip_grad_norm_(ps, c)


def clip_value(v):
    return lambda ps: torch.nn.utils.clip_grad_value_(ps, v)


# (kiln train block, torch optimizer factory, gradient clipping or None, scheduler factory or None)
TRAINING = [
    ("optimizer = adamw(lr=0.05)", lambda p: torch.optim.AdamW(p, lr=0.05), None, None),
    ("optimizer = adamw(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.3)",
     lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3),
     None, None),
    ("optimizer = sgd(lr=0.1, momentum=0.9) clip = norm(0.5)",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), clip_norm(0.5), None),
    ("optimizer = adam(lr=0.1, weight_decay=0.01) clip = norm(max_norm=2.5)",
     lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.01), clip_norm(2.5), None),
    ("optimizer = sgd(lr=0.1) clip = value(0.3) regularize = l2(0.2)",
     lambda p: torch.optim.SGD(p, lr=0.1), clip_value(0.3), None),
    ("optimizer = sgd(lr=0.1) schedule = step(2, gamma=0.5)",
     lambda p: torch.optim.SGD(p, lr=0.1), None, lambda o: L.StepLR(o, 2, gamma=0.5)),
    ("optimizer = sgd(lr=0.1, momentum=0.9) schedule = exponential(0.8)",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), None,
     lambda o: L.ExponentialLR(o, 0.8)),
    ("optimizer = adam(lr=0.1) schedule = cosine(4, eta_min=0.01)",
     lambda p: torch.optim.Adam(p, lr=0.1), None,
     lambda o: L.CosineAnnealingLR(o, T_max=4, eta_min=0.01)),
    ("optimizer = sgd(lr=0.1) warmup = 3", lambda p: torch.optim.SGD(p, lr=0.1), None,
     lambda o: L.LinearLR(o, start_factor=1 / 3, total_iters=2)),
    ("optimizer = sgd(lr=0.1, momentum=0.9) schedule = cosine(t_max=3) warmup = 2",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), None,
     lambda o: warmup_then(o, 2, lambda o: L.CosineAnnealingLR(o, T_max=3))),
    ("optimizer = adamw(lr=0.05) clip = norm(0.5) schedule = step(1, gamma=0.7) warmup = 2",
     lambda p: torch.optim.AdamW(p, lr=0.05), clip_norm(0.5),
     lambda o: warmup_then(o, 2, lambda o: L.StepLR(o, 1, gamma=0.7))),
]


def check_training(tmp):
    """Six steps of each TRAINING row on loss = mean((x w + b − y)²): w, b and the learning rate
    after every step, from a resumable checkpoint per step (kiln.hyper.lr holds the step's lr)."""
    x, y = torch.tensor(OPT_X, dtype=torch.float64), torch.tensor(OPT_Y, dtype=torch.float64)
    steps = 6
    for i, (block, make, clip, schedule) in enumerate(TRAINING):
        w = torch.tensor(OPT_W, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(OPT_B, dtype=torch.float64, requires_grad=True)
        opt = make([w, b])
        with warnings.catch_warnings():  # SequentialLR's step(0) is deprecated API in 1.13
            warnings.simplefilter("ignore")
            sched = schedule(opt) if schedule else None
            want = []
            for _ in range(steps):
                opt.zero_grad()
                loss = ((x @ w + b - y) ** 2).mean()
                if "l2(0.2)" in block:
                    loss = loss + 0.2 * l2(w)
                loss.backward()
                if clip:
                    clip([w, b])
                lr = opt.param_groups[0]["lr"]
                opt.step()
                if sched:
                    sched.step()
                want.append((w.detach().clone(), b.detach().clone(), lr))
        model = f"{tmp}/tr{i}.kiln"
        with open(model, "w") as f:
            f.write(f"const x: f64[4, 3] = {OPT_X}\nconst y: f64[4, 2] = {OPT_Y}\n"
                    f"param w: f64[3, 2] = {OPT_W}\nparam b: f64[2] = {OPT_B}\n"
                    "loss = mean((matmul(x, w) + b - y) ^ 2)\nminimize loss\n"
                    f"train {{ {block} }}\n")
        run("check", model)
        what = block.replace("optimizer = ", "")[:34]
        for runtime in ("reference", "compiled"):
            ck = f"{tmp}/tr{i}_{runtime}"
            run("train", model, "--runtime", runtime, "--epochs", str(steps), "--quiet",
                "--checkpoint-every=1", f"--keep-checkpoints={steps}", f"--checkpoint-dir={ck}")
            for step, (tw, tb, tlr) in enumerate(want, 1):
                got = load_safetensors(f"{ck}/ckpt-e0000-s{step:06d}.safetensors")
                tag = f"{what} {runtime[:3]} {step}"
                close(f"{tag} w", got["w"], tw, 1e-10, 1e-12)
                close(f"{tag} b", got["b"], tb, 1e-10, 1e-12)
                close(f"{tag} lr", got["kiln.hyper.lr"].reshape(1),
                      torch.tensor([tlr], dtype=torch.float64), 1e-13, 0)


def check_checkpoint(model_name, module, tmp):
    global failures
    model = os.path.join(SRC, "examples", model_name + ".kiln")
    trainer = f"{tmp}/trainer_{model_name}"
    run("build", model, "-o", trainer)
    ckpt = f"{tmp}/{model_name}.safetensors"
    r = subprocess.run([trainer, "--data", DATA, "--epochs", "1", "--limit-train", "1280",
                        "--limit-test", "1000", "--save", ckpt, "--quiet"],
                       capture_output=True, text=True, check=True)
    reported = float(r.stdout.split("test_accuracy=")[1].split()[0])
    state = load_safetensors(ckpt)
    module.load_state_dict(state, strict=True)  # PyTorch names, layouts and buffers
    module.eval()
    x, y = split(DATA, "t10k")
    with torch.no_grad():
        acc = (module(x[:1000]).argmax(1) == y[:1000]).float().mean().item()
    ok = abs(acc - reported) <= 0.0021  # a tie at the last ulp may flip one or two images
    print(f"{'ok  ' if ok else 'FAIL'} {model_name} checkpoint in torch: accuracy {acc:.4f}, "
          f"trainer reported {reported:.4f}")
    failures += not ok


def export_onnx(module, path, example, training):
    """torch.onnx.export with a symbolic batch, as a user would for a model to train elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, path, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.TRAINING if training
                          else torch.onnx.TrainingMode.EVAL)


def check_onnx(tmp):
    """A model exported from PyTorch and imported by kiln: the initializers become the layers'
    parameters under PyTorch's names, and the loss (cross-entropy added by the import) and every
    gradient at a batch agree with the module's, under both runtimes."""
    module = MnistCNN()
    torch.manual_seed(5)
    for p in module.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    images = torch.rand(8, 1, 28, 28)
    labels = torch.randint(0, 10, (8,), dtype=torch.int32)
    module.train()
    export_onnx(module, f"{tmp}/cnn.onnx", images, True)
    run("import", f"{tmp}/cnn.onnx", "-o", f"{tmp}/cnn.kiln")
    values = load_safetensors(f"{tmp}/cnn.safetensors")
    state = module.state_dict()
    for name, t in values.items():  # the file's initial values are the module's own
        close(f"onnx initializer {name}", t.double(), state[name].double(), 0, 0)
    params = dict(state)
    save_safetensors(f"{tmp}/p.safetensors", params)
    save_safetensors(f"{tmp}/i.safetensors", {"image": images, "label": labels})
    module.zero_grad()
    loss = F.cross_entropy(module(images), labels.long())
    loss.backward()
    grads = {name: p.grad.double() for name, p in module.named_parameters()}
    against_torch(tmp, f"{tmp}/cnn.onnx", "onnx cnn", loss.double(), grads, 1e-4)


def main():
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        check_onnx(tmp)
        check_optimizers(tmp)
        check_training(tmp)
        check_elementwise(tmp)
        check_losses(tmp)
        check_conv1d(tmp)
        check_given_kernels(tmp)
        check_untied_bias(tmp)
        check_groupnorm(tmp)
        check_gradients("mlp", MLP(), 16, tmp)
        check_gradients("mnist_cnn", MnistCNN(), 8, tmp)
        check_second_order("mlp", MLP(), 16, tmp)
        check_second_order("mnist_cnn", MnistCNN(), 8, tmp)
        check_checkpoint("mlp", MLP(), tmp)
        check_checkpoint("mnist_cnn", MnistCNN(), tmp)
    if failures:
        sys.exit(f"{failures} comparison(s) with PyTorch failed")
    print("kiln agrees with PyTorch")


if __name__ == "__main__":
    main()
