"""Our few-line re-implementations of the logic of the authors' code, for the bug audit.

The authors' code is ``hezq06/twotower_lm`` on GitHub, read at commit
e8b468e1a224e5848389f79a1070f5c0dc9bbb33 (every file cited below is unchanged there
since the commit named in its citation). Each function re-implements one piece of it in
plain torch/numpy, without DeepSpeed or transformers, and cites the lines it follows as
``<file>#L<line>``. Nothing here is copied; the names are ours.
tests/test_authors_bugs.py runs each piece next to the ``twotower`` code that replaces
it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = "hezq06/twotower_lm"
COMMIT = "e8b468e1a224e5848389f79a1070f5c0dc9bbb33"

# ttlm/model.py#L47 (all three model classes): the BERT WordPiece special ids.
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
OUTPUT_SIZE = 30528  # ttlm/model.py#L107: the vocabulary, padded from 30522


# --- bug 1: the ELMo backward stream --------------------------------------------------

def flip_seq(h: torch.Tensor) -> torch.Tensor:
    """ttlm/model.py#L583-L592 (TwoTowerELMo.flip_seq), meant to reverse the windows.

    The einsum "bwl,ww->bwl" repeats the index w in one operand, which takes the
    DIAGONAL of the flipped identity and multiplies row w by it. That diagonal is 1 only
    where w == T - 1 - w: nowhere for an even window T.
    """
    T = h.shape[1]
    flipped_identity = torch.eye(T, dtype=h.dtype).flip(0)
    return torch.einsum("bwl,ww->bwl", h, flipped_identity)


def bilm_features(x: torch.Tensor, lstm_f: nn.LSTM, lstm_b: nn.LSTM, out_f: nn.Linear,
                  out_b: nn.Linear) -> torch.Tensor:
    """One tower of ttlm/model.py#L594-L633 (forward_tt) on embeddings ``x (B, T, D)``.

    Forward stream: the input shifted right by one (L599); backward stream: the input
    flipped, shifted the same way (L602-L603), run, projected, and "flipped back" by
    :func:`flip_seq` (L622-L624). Returns ``[forward, backward]`` ``(B, T, 2 * D_out)``.
    """
    def shift(seq):  # one position of zeros at the left, the last position dropped
        return F.pad(seq[:, :-1], (0, 0, 1, 0))

    f = out_f(lstm_f(shift(x))[0])
    b = flip_seq(out_b(lstm_b(shift(x.flip(1)))[0]))
    return torch.cat([f, b], dim=-1)


# --- bug 2: readout inputs ------------------------------------------------------------

def readout_input(features: torch.Tensor, tower: int, eps: float = 1e-12
                  ) -> torch.Tensor:
    """What readout ``tower`` reads: ttlm/model.py#L333-L338 (BERT), #L634 and #L668
    (ELMo), #L871-L876 (GPT). Both towers ``features (2, ..., D)`` are concatenated, ONE
    LayerNorm (BertLayerNorm, #L18-L36, at its initial scale 1 and shift 0) normalises
    the concatenation, and only then is one tower's half sliced off."""
    D = features.shape[-1]
    joint = torch.cat([features[0], features[1]], dim=-1)
    joint = F.layer_norm(joint, joint.shape[-1:], eps=eps)
    return joint[..., tower * D:(tower + 1) * D]


# --- bug 3: "frozen" towers -----------------------------------------------------------

def deepspeed_step(optimizer: torch.optim.Optimizer) -> None:
    """One step as DeepSpeed's fp16 optimizer takes it: a parameter without a gradient
    gets a zero gradient in the flat fp32 master buffer before the Adam step
    (microsoft/DeepSpeed deepspeed/runtime/fp16/fused_optimizer.py,
    FP16_Optimizer.step); DeepSpeed's "Adam" decays weights as AdamW does.
    The authors put every parameter in the optimiser (ttlm/dslearn.py#L149-L159,
    ttlm/model.py#L426-L448) and ran the towers under no_grad only (ttlm/model.py#L312,
    #L663, #L859)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    optimizer.step()


# --- bugs 4 and 6: data and masks -----------------------------------------------------

def validation_blocks(seed: int, n_train_blocks: int, n_val_blocks: int,
                      max_data_len: int) -> np.ndarray:
    """The validation blocks one phase scores.

    Each phase is its own run with its own seed (workspace/run_2towerlm.sh#L15, #L18);
    ttlm/dslearn.py#L523-L526 seeds numpy with it, #L550-L551 builds the training set
    and then the validation set, and each shuffles its block order when built
    (ttlm/datautil.py#L275-L277); the loader reads the first ``max_data_len`` blocks
    (ttlm/datautil.py#L331, #L359-L371; ``max_data_len`` from
    workspace/TwoTowerLM.py#L66).
    """
    np.random.seed(seed)
    np.random.shuffle(np.arange(n_train_blocks))
    order = np.arange(n_val_blocks)
    np.random.shuffle(order)
    return order[:max_data_len]


def masking_rates(config: dict) -> dict[str, float]:
    """The rates TwoTowerDsBert.config reads (ttlm/model.py#L101-L104): the random and
    the unchanged rate are both read under the key ``replace_by_mask_rate``."""
    return {"mask_rate": config.get("mask_rate", 0.15),
            "replace_by_mask_rate": config.get("replace_by_mask_rate", 0.8),
            "replace_by_rand_rate": config.get("replace_by_mask_rate", 0.1),
            "unchange_rate": config.get("replace_by_mask_rate", 0.1)}


def input_masking(ids: torch.Tensor, rates: dict[str, float],
                  generator: torch.Generator, output_size: int = OUTPUT_SIZE
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """ttlm/model.py#L199-L226 (TwoTowerDsBert.input_masking), drawing from
    ``generator`` instead of the global torch generator (seeded by the run's seed,
    ttlm/dslearn.py#L525).

    Returns:
        ``(inputs, selected)``: the corrupted ids and the positions the loss is on.
    """
    draw = torch.rand(ids.shape, generator=generator)
    keep = (draw > rates["mask_rate"]) | torch.isin(ids, torch.tensor([CLS, SEP, PAD]))
    selected = ~keep
    how = torch.rand(ids.shape, generator=generator)
    to_mask = how > 1 - rates["replace_by_mask_rate"]
    low = 1 - rates["replace_by_mask_rate"] - rates["replace_by_rand_rate"]
    to_random = (how < 1 - rates["replace_by_mask_rate"]) & (how > low)
    random_ids = random_replacements(ids.shape, generator, output_size)
    inputs = ids.clone()
    inputs[to_mask & selected] = MASK
    inputs[to_random & selected] = random_ids[to_random & selected]
    return inputs, selected


def random_replacements(shape, generator: torch.Generator,
                        output_size: int = OUTPUT_SIZE) -> torch.Tensor:
    """The ids a random replacement takes (ttlm/model.py#L219-L220): uniform over
    ``[0, output_size)``, the special ids and the ids above the tokenizer included."""
    return (torch.rand(shape, generator=generator) * output_size).floor().long()


def lm_targets(windows: torch.Tensor, family: str) -> torch.Tensor:
    """The targets the ELMo and GPT losses average over, PAD included.

    The dataset returns each window as its own label (ttlm/datautil.py#L356-L357). ELMo
    predicts every position (ttlm/model.py#L729-L731), GPT every position but the first
    (#L894-L899); CAL_LOSS.CrossEntropyLoss averages over all of them (#L949-L957) with
    the default ignore_index -100, which no id equals (PAD is 0). The -100 labels of
    #L834 go only into the per-tower losses that are thrown away (bug 7).
    """
    return windows if family == "bilm" else windows[:, 1:]


def dataset_window(stream: np.ndarray, block: int, window: int, sentence_ends) -> list:
    """WikiBookDatasetBert.__getitem__ (ttlm/datautil.py#L296-L357) on ``stream``, the
    concatenation of every token file (#L272): no document boundary survives in it.

    From the block's start, skip to the first sentence end; collect sentence ends until
    one lies ``window - 3`` tokens on; then one long sentence fills the window, two
    sentences give one, three or more give two segments split near the middle.
    """
    start = block * window
    while stream[start] not in sentence_ends:
        start += 1
    start += 1
    ends, i = [], start
    while not ends or ends[-1] < start + window - 3:
        if stream[i] in sentence_ends:
            ends.append(i)
        i += 1
    if len(ends) == 1:
        return [CLS] + list(stream[start:start + window - 1])
    if len(ends) == 2:
        out = [CLS] + list(stream[start:ends[0] + 1]) + [SEP]
    else:
        middle = start + (ends[-2] - start) // 2
        cut = ends[int(np.argmin(np.abs(np.array(ends[:-2]) - middle)))]
        out = ([CLS] + list(stream[start:cut + 1]) + [SEP]
               + list(stream[cut + 1:ends[-2] + 1]) + [SEP])
    return out + [PAD] * (window - len(out))


# --- bug 5: per-token log-probabilities -----------------------------------------------

def log_prob_fp16(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ttlm/model.py#L467-L470: LogSoftmax of the model's output, which the fp16
    DeepSpeed engine (workspace/ds_config/deepspeed_config_24hbert.json#L17-L20) runs in
    fp16, then the true label's entry."""
    return logits.half().log_softmax(-1).gather(1, labels[:, None])[:, 0]


def perpvec(labels: np.ndarray, log_probs: np.ndarray, vocab_size: int) -> np.ndarray:
    """ttlm/model.py#L476-L496 (post_eval_mem): the mean log-probability of each label,
    in an array of zeros; an id never seen stays 0, an id seen once gets that value."""
    out = np.zeros(vocab_size)
    for label in np.unique(labels):
        out[label] = np.mean(log_probs[labels == label])
    return out


# --- bug 7: the GPT variant -----------------------------------------------------------

class LibraryLMHead(nn.Module):
    """A stand-in for transformers' GPT2LMHeadModel called with ``labels`` and
    ``return_dict=False``: it returns ``(loss, logits)`` over the full vocabulary at
    every position and keeps nothing on ``self``. ``patched=True`` adds the line the
    authors' comment says they added to the library (ttlm/model.py#L864-L865)."""

    def __init__(self, wte: nn.Embedding, patched: bool):
        super().__init__()
        self.wte, self.patched = wte, patched
        self.block = nn.Linear(wte.embedding_dim, wte.embedding_dim)
        self.lm_head = nn.Linear(wte.embedding_dim, wte.num_embeddings, bias=False)

    def forward(self, input_ids, labels):
        hidden = torch.tanh(self.block(self.wte(input_ids)))
        if self.patched:
            self.hidden_states = hidden
        logits = self.lm_head(hidden)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return loss, logits


def gpt_phase1_logits(towers, wte: nn.Embedding, dense: nn.Linear, input_ids):
    """TwoTowerGPT.forward in phase 1 (ttlm/model.py#L836-L855), norms left out: each
    tower is called WITH labels (its full-vocabulary logits and loss are computed and
    dropped, #L838-L839), its last hidden state is read from the patched attribute
    (#L843-L844), and the joint head decodes with the tied embedding (#L851-L853)."""
    labels = input_ids.masked_fill(input_ids == PAD, -100)  # L833-L834
    for tower in towers:
        tower(input_ids, labels)  # the result is never used
    joint = torch.cat([tower.hidden_states for tower in towers], dim=-1)
    return F.linear(F.gelu(dense(joint)), wte.weight)


# --- bug 8: weight decay --------------------------------------------------------------

# ttlm/model.py#L430-L432: a parameter whose name CONTAINS one of these is not decayed.
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "attn_nw", "attn_nb",
            "norm_w", "norm_b", "attn_qkvb", "attn_ob", "inter_b", "output_b")


def decayed_names(names, family: str) -> list[str]:
    """Names of the parameters the authors' optimiser decays (weight decay 0.01,
    workspace/ds_config/deepspeed_config_24hbert.json#L11). BERT: by the name patterns
    of ttlm/model.py#L426-L448; ELMo and GPT have no prepare_optimizer_parameters, so
    ttlm/dslearn.py#L150-L154 and #L169-L171 pass every parameter in one decayed
    group."""
    if family != "mlm":
        return list(names)
    return [n for n in names if not any(pattern in n for pattern in NO_DECAY)]


# --- bug 9: what evaluation keeps -----------------------------------------------------

def eval_mem(family: str, output, labels, input_mask, input_emb) -> dict[str, list]:
    """What one validation batch leaves behind for the per-token analysis.

    BERT (ttlm/model.py#L464-L474): log-softmax of the output and the true label's
    log-probability at the masked positions. ELMo (#L687-L693) and GPT (#L901-L907):
    only the input embeddings and the labels of the non-PAD positions; their
    post_eval_mem (#L695-L699, #L909-L913) never builds the per-token vector.
    """
    if family == "mlm":
        masked = input_mask == 0
        ll = output.log_softmax(-1)[masked].gather(1, labels[masked][:, None])[:, 0]
        return {"labels": [labels[masked]], "log_probs": [ll]}
    return {"labels": [labels[labels != PAD]], "log_probs": [],
            "input_embeddings": [input_emb[labels != PAD]]}


# --- bug 10: the batch size -----------------------------------------------------------

def deepspeed_batch_check(config: dict, world_size: int) -> bool:
    """DeepSpeed's rule for the batch keys (deepspeed/runtime/config.py,
    DeepSpeedConfig._set_batch_related_parameters and _batch_assertion): a missing
    ``gradient_accumulation_steps`` is derived as train_batch // micro // world, then
    train_batch must equal micro * accumulation * world."""
    train, micro = config["train_batch_size"], config["train_micro_batch_size_per_gpu"]
    accumulation = config.get("gradient_accumulation_steps",
                              train // micro // world_size)
    return train == micro * accumulation * world_size


# workspace/ds_config/deepspeed_config_24hbert.json#L2-L4. The file spells the
# accumulation key "gradient_acc_step", which DeepSpeed does not read (its key is
# "gradient_accumulation_steps"); ttlm/dslearn.py#L259 reads it for the schedule only.
DS_CONFIG = {"train_batch_size": 5120, "train_micro_batch_size_per_gpu": 128,
             "gradient_acc_step": 10}
N_GPUS = 3  # workspace/run_2towerlm.sh#L3: "A server with 3 Nvidia V100 GPUs ..."
