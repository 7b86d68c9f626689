"""How close KFAC / EK-FAC influence is to explicit Gauss–Newton influence, and why: brute-force checks and sweeps.

    OMP_NUM_THREADS=1 python benchmarks/kfac_accuracy.py [--quick]

Part 1 (brute force, a tiny MLP): every quantity is rebuilt by for-loops over examples and over the labels y' of
the softmax, weighted by p(y'), independently of datatrace's output-Hessian factors:
Σ_y' p(y') ∇L(x, y') ∇L(x, y')ᵀ = Jᵀ(diag p − ppᵀ)J, so the Gauss–Newton Hessian of the mean loss is
H = (1/n) Σ_i Σ_y' p_i(y') g_{i,y'} g_{i,y'}ᵀ, and per layer A = (1/n) Σ_i a_i a_iᵀ (bias as an appended 1),
S = (1/n) Σ_i Σ_y' p_i(y') δ_{i,y'} δ_{i,y'}ᵀ and the EK-FAC eigenvalues (1/n) Σ_{i,y'} p_i(y') (Q_Sᵀ G_{i,y'} Q_A)².
Printed: the largest relative error of datatrace's factors, eigenvalues and scores against these.

Part 2 (digits, 64-h-10 MLPs, ReLU, the digits-mlp training recipe): Pearson correlation of KFAC / EK-FAC
influence with explicit Gauss–Newton influence, all with the same λ = damping · trace(H)/P on the same H, as a
function of the hidden width, the number of training examples and the damping; over all (query, train) pairs and
per query (mean of the 100 per-query correlations), Pearson and Spearman. Next to them: the per-layer-exact
(block-diagonal) Gauss–Newton Hessian (the ceiling of any per-layer approximation), Grad-Dot (no Hessian), and the
relative Frobenius error of the Kronecker approximation of each layer's Gauss–Newton block.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

import datatrace as dt
from datatrace.attributors.kfac import fit_factors, kronecker_layers
from datatrace.benchmarks.digits import digits_split
from datatrace.benchmarks.recipes import fit_adam_full_batch
from datatrace.grads import per_example_gradients, select_parameters


def label_gradients(model, task, x, names, classes):
    """``(n, C, P)`` float64 per-example loss gradients for every label y', and ``(n, C)`` softmax probabilities."""
    grads = [
        per_example_gradients(model, task.loss, (x, torch.full((len(x),), c)), names)[0].double()
        for c in range(classes)
    ]
    with torch.no_grad():
        p = torch.softmax(model(x).double(), -1)
    return torch.stack(grads, 1), p


def gauss_newton(grads, p):
    """H = (1/n) Σ_i Σ_y' p_i(y') g gᵀ (exactly the GN Hessian of the mean cross-entropy)."""
    m = (grads * p.sqrt()[..., None]).reshape(-1, grads.shape[-1])
    return m.T @ m / len(grads)


def layer_blocks(model, names, layers):
    """Per layer: flat parameter indices of its ``(out, in)`` gradient block ``[W | b]`` (row-major)."""
    sizes = dict(model.named_parameters())
    offsets = dict(zip(names, np.cumsum([0] + [sizes[n].numel() for n in names])))
    out = {}
    for layer in layers:
        n_w = layer.in_dim - 1
        idx = np.empty((layer.out_dim, layer.in_dim), dtype=np.int64)
        for o in range(layer.out_dim):
            idx[o, :n_w] = offsets[layer.weight] + o * n_w + np.arange(n_w)
            idx[o, -1] = offsets[layer.bias] + o
        out[layer.name] = idx.reshape(-1)
    return out


def brute_force_checks(activation) -> dict[str, float]:
    """Largest relative errors of datatrace's KFAC / EK-FAC quantities against for-loop definitions."""
    from sklearn.datasets import make_classification

    x, y = make_classification(30, 5, n_informative=4, n_redundant=0, n_classes=3, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), activation(), torch.nn.Linear(7, 3))
    model = fit_adam_full_batch(model, x, y, 200, 0.05, 0.0, 1)[-1].eval()
    task, data = dt.ClassificationTask(), dt.Data((x, y))
    names = select_parameters(model)
    layers = kronecker_layers(model, names, "kfac")
    grads, p = label_gradients(model, task, x, names, 3)
    h = gauss_newton(grads, p)
    blocks = layer_blocks(model, names, layers)
    inputs = {"0": torch.cat([x, torch.ones(len(x), 1)], 1).double()}
    with torch.no_grad():
        inputs["2"] = torch.cat([model[1](model[0](x)), torch.ones(len(x), 1)], 1).double()
    errors = {}
    rel = lambda got, want: float((got - want).abs().max() / want.abs().max())  # noqa: E731
    kfac = fit_factors(model, task, data, layers, "kfac", 8, verbose=False)
    ekfac = fit_factors(model, task, data, layers, "ekfac", 8, verbose=False)
    for layer in layers:
        n = layer.name
        a = inputs[n].T @ inputs[n] / len(x)
        g = grads[:, :, blocks[n]].reshape(len(x), 3, layer.out_dim, layer.in_dim)
        # δ (the output gradient) is the bias column of each label gradient
        delta = g[..., -1]
        s = torch.einsum("ic,ico,icp->op", p, delta, delta) / len(x)
        q_s, q_a = kfac.q_out[n], kfac.q_in[n]
        errors[f"layer {n}: A = Q_A diag Q_Aᵀ"] = rel(q_a.T @ a @ q_a, torch.diag((q_a.T @ a @ q_a).diagonal()))
        kfac_block = q_s.kron(q_a) @ torch.diag(kfac.eigenvalues[n].reshape(-1)) @ q_s.kron(q_a).T
        errors[f"layer {n}: KFAC block = S ⊗ A"] = rel(kfac_block, torch.kron(s, a))
        rotated = torch.einsum("po,icpk,kl->icol", ekfac.q_out[n], g, ekfac.q_in[n])
        corrected = torch.einsum("ic,icol->ol", p, rotated**2) / len(x)
        errors[f"layer {n}: EK-FAC eigenvalues = E[(Q_Sᵀ G Q_A)²]"] = rel(ekfac.eigenvalues[n], corrected)
    # Scores: the same λ, explicit H from the for-loop above.
    query = (x[:6] + 0.1, y[:6])
    lam = 0.1 * float(h.trace()) / len(h)
    g_train = per_example_gradients(model, task.loss, (x, y), names)[0].double()
    g_query = per_example_gradients(model, task.loss, query, names)[0].double()
    explicit = g_query @ torch.linalg.solve(h + lam * torch.eye(len(h), dtype=h.dtype), g_train.T) / len(x)
    ours = dt.InfluenceFunction(model, task, solver="explicit", damping_abs=lam, verbose=False).fit((x, y))
    errors["explicit IF scores"] = rel(torch.as_tensor(ours.score(query).values).double(), explicit)
    for solver, factors in (("kfac", kfac), ("ekfac", ekfac)):
        approx = torch.zeros_like(h)
        for layer in layers:
            basis = factors.q_out[layer.name].kron(factors.q_in[layer.name])
            idx = torch.as_tensor(blocks[layer.name])
            approx[idx[:, None], idx] = basis @ torch.diag(factors.eigenvalues[layer.name].reshape(-1)) @ basis.T
        want = g_query @ torch.linalg.solve(approx + lam * torch.eye(len(h), dtype=h.dtype), g_train.T) / len(x)
        attr = dt.InfluenceFunction(model, task, solver=solver, damping_abs=lam, verbose=False).fit((x, y))
        errors[f"{solver} IF scores = (1/n) g_qᵀ(H_{solver} + λI)⁻¹ g_i"] = rel(
            torch.as_tensor(attr.score(query).values).double(), want
        )
    return errors


def correlations(got: np.ndarray, want: np.ndarray) -> tuple[float, float, float, float]:
    """Pearson over all pairs, mean per-query Pearson, Spearman over all pairs, mean per-query Spearman."""
    per_query = np.mean([np.corrcoef(g, w)[0, 1] for g, w in zip(got, want)])
    per_query_rank = np.mean([spearmanr(g, w)[0] for g, w in zip(got, want)])
    return (
        np.corrcoef(got.ravel(), want.ravel())[0, 1],
        per_query,
        spearmanr(got.ravel(), want.ravel())[0],
        per_query_rank,
    )


def inverse_apply(h: torch.Tensor, lam: float, rhs: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(h + lam * torch.eye(len(h), dtype=h.dtype)))


def sweep(width: int, n_train: int, dampings, seed: int = 0) -> None:
    (xt, yt), (xq, yq) = digits_split()
    x, y = xt[:n_train], yt[:n_train]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))
    model = fit_adam_full_batch(model, x, y, 300, 1e-2, 1e-3, 1)[-1].eval()
    task, data = dt.ClassificationTask(), dt.Data((x, y))
    names = select_parameters(model)
    layers = kronecker_layers(model, names, "kfac")
    grads, p = label_gradients(model, task, x, names, 10)
    h = gauss_newton(grads, p)
    del grads
    blocks = layer_blocks(model, names, layers)
    block_diagonal = torch.zeros_like(h)
    for idx in blocks.values():
        idx = torch.as_tensor(idx)
        block_diagonal[idx[:, None], idx] = h[idx[:, None], idx]
    g_train = per_example_gradients(model, task.loss, (x, y), names)[0].double()
    g_query = per_example_gradients(model, task.loss, (xq, yq), names)[0].double()
    factors = {k: fit_factors(model, task, data, layers, k, 256, verbose=False) for k in ("kfac", "ekfac")}
    frob = []
    for layer in layers:
        idx = torch.as_tensor(blocks[layer.name])
        exact = h[idx[:, None], idx]
        basis = factors["ekfac"].q_out[layer.name].kron(factors["ekfac"].q_in[layer.name])
        errs = []
        for k in ("kfac", "ekfac"):
            approx = basis @ torch.diag(factors[k].eigenvalues[layer.name].reshape(-1)) @ basis.T
            errs.append(float((approx - exact).norm() / exact.norm()))
        frob.append(f"{layer.name}: KFAC {errs[0]:.2f} EK-FAC {errs[1]:.2f}")
    print(f"\nwidth {width}, n {n_train}, P {len(h)}; relative Frobenius error of the layer blocks: {'; '.join(frob)}")
    print(f"{'damping':<9}{'method':<16}{'Pearson all':>12}{'per query':>11}{'Spearman all':>14}{'per query':>11}")
    grad_dot = g_query @ g_train.T
    for rel in dampings:
        lam = rel * float(h.trace()) / len(h)
        want = (inverse_apply(h, lam, g_query.T).T @ g_train.T / n_train).numpy()
        rows = {"block-diag GN": (inverse_apply(block_diagonal, lam, g_query.T).T @ g_train.T).numpy()}
        for k in ("kfac", "ekfac"):
            attr = dt.InfluenceFunction(model, task, solver=k, damping_abs=lam, verbose=False).fit((x, y))
            rows[k.upper()] = attr.score((xq, yq)).values
        rows["Grad-Dot"] = grad_dot.numpy()
        for method, got in rows.items():
            c = correlations(got, want)
            print(f"{rel:<9g}{method:<16}{c[0]:>12.3f}{c[1]:>11.3f}{c[2]:>14.3f}{c[3]:>11.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only part 1 and the test's setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("Part 1: largest relative error against for-loop definitions (tiny MLP, 30 examples, 3 classes)")
    for activation in (torch.nn.Tanh, torch.nn.ReLU):
        for what, err in brute_force_checks(activation).items():
            print(f"  {activation.__name__:<5} {what:<58} {err:.1e}")
    print("\nPart 2: correlation with explicit Gauss–Newton influence on digits MLPs (100 queries)")
    settings = [(32, 300)] if args.quick else [(32, 300), (16, 300), (64, 300), (32, 1000), (64, 1000)]
    for width, n in settings:
        sweep(width, n, (0.01, 0.1, 0.5, 2.0))


if __name__ == "__main__":
    main()
