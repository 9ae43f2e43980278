"""grounded_fast.ot as a POT drop-in that existing POT code can trust: every POT name we do not
implement is POT's own object, modules list only their public names, and patch_pot() makes the
installed POT run our kernels, undone exactly."""
import importlib
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types

import numpy as np
import ot as pot
import pytest

import grounded_fast
import grounded_fast.ot as got
from grounded_fast.ot import _common

ROOT = pathlib.Path(__file__).resolve().parents[1]
DROPIN = [got, got.bregman, got.partial, got.unbalanced, got.batch]
HELPERS = {"torch", "annotations", "math", "np", "prepare", "check_reg", "Converter", "err_list", "print_verbose",
           "warn_not_converged", "envelope_loss", "entropic_ot", "dataclass", "field", "Any", "BALANCED", "PARTIAL",
           "UNBALANCED", "entropic_ot_reference", "solve"}


def _pot_mod(mod):
    return importlib.import_module("ot" + mod.__name__[len("grounded_fast.ot"):])


@pytest.fixture(autouse=True)
def _restore_pot():
    yield
    grounded_fast.unpatch_pot()


def _snapshot():
    """{module name: {attribute: object}} of every POT module, to check an exact restore by identity."""
    return {k: dict(vars(m)) for k, m in list(sys.modules.items())
            if (k == "ot" or k.startswith("ot.")) and isinstance(m, types.ModuleType)}


def _assert_same(before, after):
    for key, attrs in before.items():
        now = after[key]
        changed = [k for k, v in attrs.items() if now.get(k, object()) is not v]
        assert not changed, f"{key}: {changed} not restored"


# ------------------------------------------------------------------------------------ delegation

@pytest.mark.parametrize("path", ["emd", "emd2", "lp", "gromov", "da", "utils", "solve", "solve_sample",
                                  "partial.partial_wasserstein", "unbalanced.mm_unbalanced", "bregman.barycenter",
                                  "bregman.greenkhorn", "batch.solve_gromov_batch", "plot"])
def test_names_we_do_not_define_are_pots(path):
    modpath, _, name = ("." + path).rpartition(".")
    ours = importlib.import_module("grounded_fast.ot" + modpath)
    theirs = importlib.import_module("ot" + modpath)
    if name in ours.__all__:  # another module may add an accelerated one
        pytest.skip(f"{path} is grounded_fast's own")
    obj = getattr(ours, name)  # (imports POT's submodule 'plot', which `import ot` leaves out)
    assert obj is getattr(theirs, name)


def test_import_forms_bind_pots_modules():
    from grounded_fast.ot.gromov import gromov_wasserstein
    from grounded_fast.ot.partial import partial_wasserstein
    from grounded_fast.ot import lp
    import grounded_fast.ot.lp.solver_1d
    import grounded_fast.ot.unbalanced as unb
    assert gromov_wasserstein is pot.gromov.gromov_wasserstein
    assert partial_wasserstein is pot.partial.partial_wasserstein
    assert lp is pot.lp and sys.modules["grounded_fast.ot.lp"] is pot.lp
    assert grounded_fast.ot.lp.solver_1d is pot.lp.solver_1d
    assert unb.sinkhorn_unbalanced.__module__ == "grounded_fast.ot.unbalanced"  # ours stays ours
    # POT's files are never loaded a second time under our name
    for key, mod in list(sys.modules.items()):
        if key.startswith("grounded_fast.ot."):
            assert mod.__name__ in (key, "ot" + key[len("grounded_fast.ot"):]), key
            if mod.__name__ != key:
                assert sys.modules[mod.__name__] is mod


def test_unknown_names_raise_attribute_error():
    assert hasattr(got.partial, "partial_wasserstein")  # POT's name resolves, an unknown one does not
    for mod in DROPIN:
        with pytest.raises(AttributeError, match="no_such_ot_function"):
            mod.no_such_ot_function
        assert not hasattr(mod, "no_such_ot_function") and not hasattr(mod, "__no_such_dunder__")
    assert not hasattr(got.partial, "_private_of_pot")
    with pytest.raises(ImportError, match="no_such_ot_function"):
        from grounded_fast.ot import no_such_ot_function  # noqa: F401
    with pytest.raises(ModuleNotFoundError):
        import grounded_fast.ot.no_such_ot_module  # noqa: F401


def test_without_pot_delegated_names_say_pip_install_pot():
    code = textwrap.dedent("""
        import sys
        sys.modules["ot"] = None          # POT not installed
        import numpy as np
        import grounded_fast, grounded_fast.ot as got

        def says(fn, *names):
            try:
                fn()
            except ImportError as exc:
                assert "pip install pot" in str(exc), exc
                for n in names:
                    assert n in str(exc), (n, exc)
            else:
                raise AssertionError("no ImportError")

        says(lambda: got.emd, "emd")
        says(lambda: got.partial.partial_wasserstein, "partial_wasserstein")
        says(lambda: got.unbalanced.mm_unbalanced, "mm_unbalanced")
        says(lambda: got.bregman.barycenter, "barycenter")
        says(lambda: exec("from grounded_fast.ot import emd2"), "emd2")
        says(lambda: exec("from grounded_fast.ot.partial import partial_wasserstein"), "partial_wasserstein")
        says(lambda: exec("import grounded_fast.ot.lp"), "lp")
        says(lambda: exec("from grounded_fast.ot.gromov import gromov_wasserstein"), "gromov")
        says(lambda: got.dist(np.ones((2, 2)), np.ones((3, 2)), metric="cityblock"), "dist")
        says(grounded_fast.patch_pot)
        grounded_fast.unpatch_pot()       # no-op
        assert dir(got.partial) == sorted(got.partial.__all__), dir(got.partial)
        P = got.sinkhorn(np.full(3, 1 / 3), np.full(2, 1 / 2), np.ones((3, 2)), 0.1)
        assert abs(P.sum() - 1) < 1e-9
        assert "ot" not in [k.split(".")[0] for k, m in sys.modules.items() if m is not None]
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]


# --------------------------------------------------------------------------------- __all__ / dir

@pytest.mark.parametrize("mod", DROPIN, ids=lambda m: m.__name__)
def test_dir_lists_public_names_only(mod):
    names = dir(mod)
    assert set(mod.__all__) <= set(names)
    for name in mod.__all__:
        getattr(mod, name)
    theirs = _pot_mod(mod)
    pot_names = set(dir(theirs))
    assert not (HELPERS - pot_names) & set(names), sorted((HELPERS - pot_names) & set(names))
    # every name dir shows is ours (in __all__) or POT's public name at the same path
    assert set(names) <= set(mod.__all__) | {n for n in pot_names if not n.startswith("_")}


@pytest.mark.parametrize("mod", DROPIN + [got.costs], ids=lambda m: m.__name__)
def test_all_names_every_public_function_and_no_helper_shadows_pot(mod):
    defined = [k for k, v in vars(mod).items() if not k.startswith("_") and callable(v)
               and getattr(v, "__module__", None) == mod.__name__]
    missing = sorted(set(defined) - set(mod.__all__))
    assert not missing, f"add {missing} to {mod.__name__}.__all__ (patch_pot and dir() derive from it)"
    if mod is got.costs:
        return
    theirs = _pot_mod(mod)
    for k, v in vars(mod).items():
        if not k.startswith("_") and k not in mod.__all__ and hasattr(theirs, k):
            assert v is getattr(theirs, k), f"helper {mod.__name__}.{k} hides POT's {theirs.__name__}.{k}"


# ---------------------------------------------------------------------------------- patch_pot

def _problem(n=20, m=30, seed=0):
    rng = np.random.default_rng(seed)
    M = pot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    return np.full(n, 1 / n), np.full(m, 1 / m), M / M.max()


def _spy(monkeypatch):
    """Counts the op's calls from every drop-in module that imports it."""
    calls = []
    real = _common.entropic_ot

    def counting(*args, **kwargs):
        calls.append(kwargs.get("problem"))
        return real(*args, **kwargs)

    for name, mod in list(sys.modules.items()):
        if name.startswith("grounded_fast.ot.") and getattr(mod, "entropic_ot", None) is real:
            monkeypatch.setattr(mod, "entropic_ot", counting)
    return calls


def test_patch_pot_runs_our_kernels_and_undo_restores_pot_exactly(monkeypatch):
    names = grounded_fast.accelerated_pot_names()
    assert {"ot.sinkhorn", "ot.sinkhorn2", "ot.bregman.sinkhorn_log", "ot.partial.entropic_partial_wasserstein",
            "ot.unbalanced.sinkhorn_unbalanced", "ot.batch.solve_batch"} <= set(names)
    assert "ot.cost_matrix" not in names  # ours only: nothing to replace
    originals = {p: eval(p, {"ot": pot}) for p in names}
    pot_sinkhorn = pot.sinkhorn
    before = _snapshot()
    calls = _spy(monkeypatch)
    a, b, M = _problem()

    handle = grounded_fast.patch_pot()
    assert handle.applied and grounded_fast.patch_pot().applied is False  # idempotent
    for p in names:
        ours = eval(p.replace("ot.", "got.", 1), {"got": got})
        assert eval(p, {"ot": pot}) is ours, p
    assert pot.bregman._sinkhorn.sinkhorn is got.sinkhorn is pot.bregman.sinkhorn
    assert pot.utils.dist is got.dist
    ids = {id(f) for f in originals.values()}
    for key, mod in list(sys.modules.items()):
        if key == "ot" or key.startswith("ot."):
            left = [k for k, v in vars(mod).items() if id(v) in ids]
            assert not left, f"{key}.{left} still POT's"
    from ot.partial import entropic_partial_wasserstein
    assert entropic_partial_wasserstein is got.partial.entropic_partial_wasserstein

    P = pot.sinkhorn(a, b, M, 0.05)
    assert len(calls) == 1
    np.testing.assert_allclose(P, got.sinkhorn(a, b, M, 0.05), rtol=0, atol=0)
    pot.sinkhorn(a, b, M, 0.05, backend="torch")  # our keyword
    Pp = entropic_partial_wasserstein(a, b, M, 0.05, m=0.5)
    assert abs(Pp.sum() - 0.5) < 1e-9 and len(calls) == 4
    da = pot.da.SinkhornTransport(reg_e=0.1)  # POT's own code calls the patched functions
    rng = np.random.default_rng(1)
    da.fit(Xs=rng.normal(size=(20, 2)), Xt=rng.normal(size=(30, 2)))
    assert len(calls) == 5 and np.isfinite(da.coupling_).all()
    assert pot.dist(M[:3], M[:4], metric="cityblock").shape == (3, 3 + 1)  # POT's metric, no recursion

    grounded_fast.unpatch_pot()
    grounded_fast.unpatch_pot()  # twice: no-op
    _assert_same(before, _snapshot())
    for p, f in originals.items():
        assert eval(p, {"ot": pot}) is f, p
    assert pot.sinkhorn is pot_sinkhorn
    n = len(calls)
    pot.sinkhorn(a, b, M, 0.05)
    assert len(calls) == n  # POT's own again


def test_unpatch_without_patch_is_a_no_op():
    before = _snapshot()
    grounded_fast.unpatch_pot()
    _assert_same(before, _snapshot())


def test_patch_pot_as_context_manager_restores_also_on_error():
    before = _snapshot()
    with pytest.raises(KeyError):
        with grounded_fast.patch_pot():
            assert pot.sinkhorn is got.sinkhorn
            with grounded_fast.patch_pot():  # nested: the inner exit leaves the outer patch on
                pass
            assert pot.sinkhorn is got.sinkhorn
            raise KeyError
    _assert_same(before, _snapshot())


def test_pot_modules_imported_while_patched_are_restored_too():
    name = "ot._late_module_for_test"
    try:
        with grounded_fast.patch_pot():
            late = types.ModuleType(name)  # a POT module imported while patched: it holds ours
            late.sinkhorn = pot.sinkhorn
            sys.modules[name] = late
            assert late.sinkhorn is got.sinkhorn
        assert late.sinkhorn is pot.bregman._sinkhorn.sinkhorn and late.sinkhorn is not got.sinkhorn
    finally:
        sys.modules.pop(name, None)


def test_accelerated_set_is_derived_from_all(monkeypatch):
    def greenkhorn(a, b, M, reg, **kwargs):
        """A stand-in for an accelerated greenkhorn another module adds."""
        return "ours"

    if "greenkhorn" not in got.bregman.__all__:
        monkeypatch.setattr(got.bregman, "greenkhorn", greenkhorn, raising=False)
        monkeypatch.setattr(got.bregman, "__all__", got.bregman.__all__ + ["greenkhorn"])
    ours, pots = got.bregman.greenkhorn, pot.bregman.greenkhorn
    assert "ot.bregman.greenkhorn" in grounded_fast.accelerated_pot_names()
    with grounded_fast.patch_pot():
        assert pot.bregman.greenkhorn is ours and pot.bregman._sinkhorn.greenkhorn is ours
    assert pot.bregman.greenkhorn is pots


def test_dist_passes_other_metrics_and_backends_to_pot():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    for metric in ("cityblock", "minkowski", "correlation"):
        np.testing.assert_array_equal(got.dist(x, y, metric=metric, p=3), pot.dist(x, y, metric=metric, p=3))
    np.testing.assert_array_equal(got.dist(x, y, backend="scipy"), pot.dist(x, y, backend="scipy"))
    np.testing.assert_allclose(got.dist(x, y, w=np.ones(3)), pot.dist(x, y), rtol=1e-12)


def test_readme_lists_exactly_the_accelerated_functions():
    text = (ROOT / "README.md").read_text()
    section = text.split("## POT drop-in", 1)[1].split("\n## ", 1)[0]
    listed = section.split("Every other POT name", 1)[0]
    names = sorted(set(re.findall(r"`(ot\.[\w.]+)`", listed)))
    assert names == grounded_fast.accelerated_pot_names(), "README's list of accelerated POT functions is stale"
    assert "patch_pot()" in section and "pip install pot" in section
