"""``seekwatch make-tiny-model DIR``: a small model with DeepSeek-LLM's architecture.

No model hub is reachable from CI or the demo, yet the node must load its model through the
ordinary ``from_pretrained`` path so that real DeepSeek weights in a local folder load the
same way. This writes such a folder: a Llama-layout config (the layout DeepSeek-LLM-7B uses,
shrunk to a few layers and a small hidden size), weights in safetensors, and a real
byte-level BPE tokenizer trained here with the ``tokenizers`` library on the bundled Chinese
and English corpora, with DeepSeek-LLM-chat's special tokens and chat template.

The weights come two ways. *Trained* (the default for the tiny size): a few minutes of
training on ``inference/data/support_corpus.yaml``, an online store's customer-service
questions and answers, so the demo's replies are readable support answers that end on the
end-of-sentence token at a realistic length, as a healthy service's do. Training is
deterministic and runs once per corpus, training settings and code: the result is cached
under ``~/.cache/seekwatch/models/tiny-support-<hash>`` and copied from there afterwards.
*Random* (``--weights random``, and always for ``--size deepseek-7b``): made in seconds;
serving tests that need a model's shape and speed, not its words, use it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"

#: DeepSeek-LLM-7B-chat's template: "User: ...\n\nAssistant: ...<eos>", system text first.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: DeepSeek-LLM-7B: 30 layers, hidden 4096, intermediate 11008, 32 heads, vocab 102400,
#: context 4096. The tiny default keeps the shape family, shrunk.
TINY = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=4096)
DEEPSEEK_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                   num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


#: The published config.json of each R1-distill family, shrunk (4 layers, width 256).
VARIANTS = {
    "qwen2-r1": {  # DeepSeek-R1-Distill-Qwen-{1.5B,7B,14B,32B}
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
        "max_position_embeddings": 131072, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "sliding_window": 4096, "use_sliding_window": False, "max_window_layers": 4, "tie_word_embeddings": False,
    },
    "llama3-r1": {  # DeepSeek-R1-Distill-Llama-{8B,70B}
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
        "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    },
}


DATA = Path(__file__).parent / "data"
CORPUS_FILE = DATA / "support_corpus.yaml"


# --------------------------------------------------------------------------------------------
# the support corpus
# --------------------------------------------------------------------------------------------
def fill_values(rng: random.Random, values: dict[str, list[Any]]) -> dict[str, Any]:
    """One customer's values: order number, phone, e-mail, date, amount, and one pick of each
    list in ``values``. ``seekwatch loadgen`` fills its scenarios with this very function, so
    the trained model has seen the shapes the demo's customers send."""
    v = {k: rng.choice(opts) for k, opts in values.items()}
    day = rng.randint(1, 28)
    v.update({
        "order": f"SW{rng.randint(2025, 2026)}{rng.randint(1, 12):02d}{day:02d}{rng.randint(0, 10**6 - 1):06d}",
        "phone": f"1{rng.choice('3456789')}{rng.randint(0, 10**9 - 1):09d}",
        "email": f"{rng.choice(['li.wei', 'zhang.min', 'wang_fang', 'j.smith', 'maria.g', 'chen88'])}"
                 f"{rng.randint(1, 999)}@{rng.choice(['example.com', 'mail.example.cn', 'corp.example.org'])}",
        "date": f"{rng.randint(1, 12)}月{day}日" if rng.random() < 0.5 else f"2026-{rng.randint(1, 12):02d}-{day:02d}",
        "amount": rng.randint(100, 9999),
    })
    return v


def _table_values(rng: random.Random, values: dict[str, list[Any]]) -> dict[str, Any]:
    v = {k: rng.choice(opts) for k, opts in values.items()}
    v.update(n1=rng.randint(20, 900), n2=rng.randint(300, 9000), n3=rng.randint(3, 120),
             pct=rng.randint(90, 99), rating=rng.randint(40, 50) / 10, days=rng.randint(12, 60))
    return v


def load_corpus(path: Path = CORPUS_FILE) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("version") != 1 or not data.get("topics"):
        raise ValueError(f"{path}: expected version: 1 and a list of topics")
    return data


def conversations(corpus: dict[str, Any], n: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` training conversations: a system prompt or none, then 1-4 question-answer
    pairs of one topic (opening question first), values filled per conversation, and now
    and then a customer's contact details glued to a question."""
    rng = random.Random(seed)
    topics = corpus["topics"]
    tables = corpus.get("tables") or {}
    out = []
    for _ in range(n):
        topic = rng.choices(topics, weights=[float(t.get("weight", 1)) for t in topics])[0]
        values = fill_values(rng, corpus.get("values") or {})
        table = tables.get(topic["lang"])
        if table:
            values["table"] = "\n".join(
                table["row"].format(i=i + 1, **_table_values(rng, corpus.get("values") or {}))
                for i in range(rng.randint(*table["rows"])))
        msgs: list[dict[str, str]] = []
        system = rng.choice(corpus.get("systems") or [None])
        if system:
            msgs.append({"role": "system", "content": system})
        pairs = topic["pairs"]
        chosen = [pairs[0]] + rng.sample(pairs[1:], k=min(len(pairs) - 1, rng.randint(0, 3)))
        contacts = (corpus.get("contact") or {}).get(topic["lang"]) or []
        sep = " " if topic["lang"] == "en" else ""
        for pair in chosen:
            qi = rng.randrange(len(pair["q"]))
            q = pair["q"][qi]
            if contacts and rng.random() < 0.15:
                c = rng.choice(contacts)
                q = q + sep + c if rng.random() < 0.5 else c + sep + q
            msgs.append({"role": "user", "content": q.format(**values)})
            # one answer per way of asking: a question always gets the same reply, so the
            # small model learns one path per question instead of blending two
            msgs.append({"role": "assistant", "content": pair["a"][qi % len(pair["a"])].format(**values)})
        out.append(msgs)
    return out


def corpus_texts(corpus: dict[str, Any]) -> list[str]:
    """Every question, answer, contact line and system prompt (for the tokenizer)."""
    texts = [s for s in corpus.get("systems") or [] if s]
    for lines in (corpus.get("contact") or {}).values():
        texts += lines
    for t in corpus["topics"]:
        for pair in t["pairs"]:
            texts += pair["q"] + pair["a"]
    return texts


# --------------------------------------------------------------------------------------------
# tokenizer and model
# --------------------------------------------------------------------------------------------
def train_tokenizer(vocab_size: int = 4096):
    """Train a byte-level BPE tokenizer on the bundled corpora and wrap it for transformers
    (byte-level: any text encodes, including what the corpora never show)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [line for line in (DATA / "tiny_corpus.txt").read_text("utf-8").splitlines() if line.strip()]
    lines += corpus_texts(load_corpus())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build(tokenizer, size: str, seed: int, device: str):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = TINY if size == "tiny" else DEEPSEEK_7B
    config = LlamaConfig(
        vocab_size=len(tokenizer), rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        torch_dtype="float32" if size == "tiny" else "bfloat16", **shape,
    )
    torch.manual_seed(seed)
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialising 7B random weights is minutes on a CPU, seconds on a GPU
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.7, top_p=0.95,
    )
    return model


#: How the tiny model is trained (part of the cache key: change one, get a new model).
TRAINING = dict(conversations=3000, steps=350, batch=16, lr=5e-3, warmup=20, weight_decay=0.01,
                max_len=768)


def encode_conversation(tokenizer, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of the conversation rendered with the chat template, and labels that are
    the ids on assistant answers (and their end-of-sentence token), -100 elsewhere: the
    model learns to answer, not to imitate customers."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    pos = 0
    for m in messages:
        if m["role"] == "assistant":
            start = text.index("Assistant: " + m["content"] + EOS, pos) + len("Assistant:")
            end = start + 1 + len(m["content"]) + len(EOS)
            spans.append((start, end))
            pos = end
    ids, labels = [], []
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        ids.append(tid)
        labels.append(tid if any(s <= a and b <= e for s, e in spans) else -100)
    return ids[:max_len], labels[:max_len]


def train_support_model(out: Path, *, seed: int = 0, log=print) -> None:
    """Train the tiny model on the support corpus and save model and tokenizer to ``out``."""
    import math

    import torch

    cfg = TRAINING
    # One thread: on a shared, busy CPU two threads wait on each other and train slower
    # (0.8 s a step against 1.8 s, measured on the 2-core dev box under load).
    torch.set_num_threads(int(os.environ.get("SEEKWATCH_TRAIN_THREADS", "1")))
    tokenizer = train_tokenizer()
    model = _build(tokenizer, "tiny", seed, "cpu")
    data = [encode_conversation(tokenizer, c, int(cfg["max_len"]))
            for c in conversations(load_corpus(), int(cfg["conversations"]), seed)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=(0.9, 0.98))
    steps, warm = int(cfg["steps"]), int(cfg["warmup"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    # Batches of neighbours in length order: little padding, so a step costs what its tokens cost.
    data.sort(key=lambda d: len(d[0]))
    bs = int(cfg["batch"])
    model.train()
    t0 = time.monotonic()
    for step in range(steps):
        first = rng.randrange(0, len(data) - bs + 1)
        batch = data[first:first + bs]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, :len(x)] = torch.tensor(x)
            labels[i, :len(y)] = torch.tensor(y)
            mask[i, :len(x)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log(f"  step {step + 1}/{steps}  loss {loss.item():.3f}  {time.monotonic() - t0:.0f} s")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _cache_key(seed: int) -> str:
    """Hash of everything the trained model is made from: both corpora, the training
    settings, the shape, the random seed and the source of the functions that build it (so an edit
    to the command line or to this module's docs does not cost a retraining)."""
    import inspect

    from inference.model_cache import content_key

    code = [inspect.getsource(f) for f in _TRAINING_CODE]
    return content_key(CORPUS_FILE, DATA / "tiny_corpus.txt", CHAT_TEMPLATE, *code,
                       extra=[json.dumps(TRAINING, sort_keys=True), json.dumps(TINY, sort_keys=True), f"seed={seed}"])


#: The functions the trained model is made by (their source is part of the cache key).
_TRAINING_CODE = (fill_values, _table_values, conversations, corpus_texts, train_tokenizer, _build,
                  encode_conversation, train_support_model)


def make_variant(tiny_dir: Path, out: Path, arch: str, *, seed: int = 0) -> Path:
    """A random-weight model of an R1-distill shape (``VARIANTS``), with the tiny model's
    tokenizer: the serving tests and ``benchmarks/decode_check.py`` check the engine on it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    spec = dict(VARIANTS[arch], vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    for name in ("generation_config.json",):
        if (tiny_dir / name).exists():
            shutil.copy(tiny_dir / name, out / name)
    return out


def trained_model_path(seed: int = 0) -> Path:
    """Where the trained tiny model for this corpus, configuration and code is cached."""
    from inference.model_cache import models_dir

    return models_dir() / f"tiny-support-{_cache_key(seed)}"


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, size: str = "tiny", weights: str = "trained",
                    vocab_size: int = 4096, device: str = "cpu", log=print) -> Path:
    """Write a model folder to ``out_dir`` and return the path.

    ``weights="trained"`` (tiny only): the model trained on the support corpus, taken from
    the cache (``~/.cache/seekwatch/models``) or trained there first (a few minutes on a
    CPU, once per corpus/configuration/code). ``weights="random"``: random weights (the
    only choice for the DeepSeek-7B shape: GPU serving tests need its size, not its words).
    """
    out = Path(out_dir)
    if weights == "trained" and size != "tiny":
        raise ValueError("--weights trained is for --size tiny; the deepseek-7b shape has random weights")
    if weights == "trained":
        cached = trained_model_path(seed)
        if not (cached / "seekwatch-model.json").exists():
            log(f"training the tiny model on the support corpus (once; cached in {cached}) …")
            tmp = cached.with_name(cached.name + f".partial-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            t0 = time.monotonic()
            train_support_model(tmp, seed=seed, log=log)
            (tmp / "seekwatch-model.json").write_text(json.dumps(
                {"generated_by": "seekwatch make-tiny-model", "seed": seed, "size": size, "weights": "trained",
                 "corpus": str(CORPUS_FILE.name), "training": TRAINING,
                 "train_seconds": round(time.monotonic() - t0, 1),
                 "note": "trained briefly on a small support corpus: readable answers to the demo's questions, "
                         "nothing more"}, indent=2))
            try:
                os.replace(tmp, cached)
            except OSError:  # another process finished first: use its copy
                shutil.rmtree(tmp, ignore_errors=True)
        # into the folder, next to whatever is there (the random variant writes the same way)
        shutil.copytree(cached, out, dirs_exist_ok=True)
        return out

    import torch  # noqa: F401  (fail early with a clear ImportError)

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    if size != "tiny":
        # DeepSeek-LLM's vocabulary is 102,400. Pad the locally trained tokenizer with
        # visible placeholder tokens so every id the random model samples decodes to text
        # (an id past the vocabulary would decode to nothing and hide the stream's tokens).
        tokenizer.add_tokens([f"<t{i}>" for i in range(len(tokenizer), 102400)])
    model = _build(tokenizer, size, seed, device)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "seekwatch-model.json").write_text(json.dumps(
        {"generated_by": "seekwatch make-tiny-model", "seed": seed, "size": size,
         "weights": "random", "note": "not a trained model: output text is random"}, indent=2))
    return out


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=__doc__.splitlines()[0])
    p.add_argument("dir", metavar="DIR", help="folder to write the model into")
    p.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    p.add_argument("--size", choices=["tiny", "deepseek-7b"], default="tiny",
                   help="tiny (default, for CPU) or the full DeepSeek-LLM-7B shape with random bf16 weights")
    p.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is much faster for deepseek-7b)")
    p.add_argument("--weights", choices=["trained", "random"], default=None,
                   help="trained (default for tiny): trained on the bundled support corpus, readable answers that end "
                        "on their own, cached in ~/.cache/seekwatch/models; random (default and only choice for "
                        "deepseek-7b): random weights in seconds, for serving tests that need shapes, not words")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from contracts.config import ConfigError

    weights = args.weights or ("trained" if args.size == "tiny" else "random")
    if weights == "trained" and args.size != "tiny":
        raise ConfigError("--weights trained is for --size tiny; the deepseek-7b shape has random weights only")
    out = make_tiny_model(args.dir, seed=args.seed, size=args.size, device=args.device, weights=weights,
                          log=lambda m: print(m, flush=True))
    print(f"wrote {args.size} model ({weights} weights) to {out}")
    return 0
