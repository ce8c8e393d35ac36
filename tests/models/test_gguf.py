"""GGUF models: sizes before load, broken or unsupported files, dequantised models are trainable."""

from __future__ import annotations

import numpy as np
import pytest

from llmos_jupyter.errors import LLMOSError

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol_file(pulled):
    return pulled["smollm2-135m-instruct"] / GGUF


def test_estimate_uses_tensor_table_not_file_size(smol_file):
    from llmos_jupyter.models.gguf_check import check_gguf
    from llmos_jupyter.models.loading import estimate

    info = check_gguf(smol_file)
    assert info.params == 134_515_008
    assert info.actual_bytes == info.expected_bytes == 98_362_432
    est = estimate("smollm2-135m-instruct")
    assert est["params"] == 134_515_008 and est["bytes"] == 538_060_032 and est["dtype"] == "float32"


def test_unsupported_architecture_is_one_line(tmp_path, fresh_api):
    import gguf

    path = tmp_path / "mamba9000.gguf"
    w = gguf.GGUFWriter(str(path), arch="mamba9000")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(LLMOSError) as e:
        fresh_api.load(str(path), alias="bad")
    msg = str(e.value)
    assert "'mamba9000' is not supported" in msg and "llama" in msg and "\n" not in msg
    assert fresh_api.manager().ps() == []


def test_truncated_file_is_one_line(tmp_path, smol_file, fresh_api):
    from llmos_jupyter.resources.memory import process_rss

    cut = tmp_path / "truncated.gguf"
    with open(smol_file, "rb") as src:
        cut.write_bytes(src.read(5_000_000))
    rss0 = process_rss()
    with pytest.raises(LLMOSError) as e:
        fresh_api.load(str(cut), alias="cut")
    msg = str(e.value)
    assert "truncated or corrupt" in msg and "98,362,432" in msg and "5,000,000" in msg and "\n" not in msg
    assert fresh_api.manager().ps() == [] and fresh_api.manager().used("cpu") == 0
    assert process_rss() - rss0 < 50 * 2**20  # nothing big was kept


def test_not_a_gguf(tmp_path, fresh_api):
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(b"hello, this is not a model")
    with pytest.raises(LLMOSError, match="not a GGUF file"):
        fresh_api.load(str(bad))


@pytest.mark.slow
def test_gguf_model_is_not_marked_quantised(fresh_api):
    from llmos_jupyter.models.loading import estimate

    fresh_api.load("smollm2-135m-instruct", alias="smol", engine="transformers")
    rec = fresh_api.manager().get("smol")
    model = rec.model
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    assert rec.quantization == "gguf" and rec.params == 134_515_008
    measured = sum(rec.bytes.values())
    assert abs(measured - estimate("smollm2-135m-instruct")["bytes"]) / measured < 0.10
