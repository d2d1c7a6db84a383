"""Labelled corpus for the refusal / negative-answer detector (True = refusal).

Chinese and English, positives and tricky negatives (apologies that are not refusals,
"I can't help but…", a user's inability, quoted error messages, hedges). Run

    ~/.cache/seekwatch/venv/bin/python -m tests.instrumentation.refusal_corpus

to print precision / recall of the shipped detector here and on the held-out set
(``refusal_heldout.py``). The phrase rules were written with this corpus, and the
classifier's training data (``inference/data/refusals_train.yaml``) contains it, so its
figures are a regression floor; the held-out set is the estimate (docs/quality.md).
"""
from __future__ import annotations

CORPUS: list[tuple[str, bool]] = [
    # ---------------------------------------------------------------- positives, Chinese
    ("抱歉，我无法帮助您完成这个请求。", True),
    ("对不起，我不能提供这方面的信息。", True),
    ("作为一个AI语言模型，我无法访问实时数据。", True),
    ("很抱歉，我无法回答这个问题。", True),
    ("抱歉，我不能协助进行任何违法活动。", True),
    ("我无法提供关于如何制造武器的信息。", True),
    ("对不起，这个问题超出了我的能力范围。", True),
    ("非常抱歉，但我不能满足您的要求。", True),
    ("作为人工智能助手，我不能给出医疗诊断，请咨询专业医生。", True),
    ("抱歉，我没办法帮你做这件事。", True),
    ("很遗憾，我无法为您查询订单的物流信息。", True),
    ("我不能回答这个问题。", True),
    ("抱歉，作为AI，我不具备访问您账户的权限。", True),
    ("对不起，我无法处理该请求。", True),
    ("不好意思，我不能透露其他用户的信息。", True),
    ("这个请求我无法完成，抱歉。", True),
    ("抱歉，我不会提供此类内容。", True),
    ("很抱歉，根据相关规定，我无法回答这个问题。", True),
    ("对不起，我无法理解您的问题，请换一种说法。", True),
    ("抱歉，我目前无法提供这项服务。", True),
    ("抱歉，我无法满足这个请求，因为它可能违反使用政策。", True),
    ("对不起，作为AI助手，我不能参与这类讨论。", True),
    ("我不能帮你写这个病毒程序。", True),
    ("恕我无法回答涉及个人隐私的问题。", True),
    ("这类问题不在我的服务范围内，建议您咨询人工客服。", True),
    # ---------------------------------------------------------------- positives, English
    ("I'm sorry, but I cannot help with that.", True),
    ("I can't help with that.", True),
    ("I'm sorry, but I can't assist with that request.", True),
    ("As an AI language model, I cannot browse the internet.", True),
    ("I am unable to provide that information.", True),
    ("Sorry, I can't do that.", True),
    ("I cannot comply with this request.", True),
    ("Unfortunately, I can't help you with that.", True),
    ("I'm not able to provide medical advice. Please consult a doctor.", True),
    ("I must decline to answer that question.", True),
    ("I won't be able to help with this.", True),
    ("I'm afraid I can't do that, Dave.", True),
    ("Sorry, but I'm unable to assist with creating malware.", True),
    ("As an AI, I don't have access to your order history.", True),
    ("I apologize, but I cannot fulfill this request.", True),
    ("That's not something I can help with.", True),
    ("I can\u2019t provide instructions for that.", True),
    ("My apologies, but I'm not able to share personal data.", True),
    ("I'm sorry, I cannot answer that.", True),
    ("I'm not allowed to discuss that topic.", True),
    ("I\u2019m sorry, but I can\u2019t share that.", True),
    ("I'm unable to help with that request.", True),
    ("Sorry, that's not something I'm able to help with.", True),
    ("Thanks for asking. However, I must respectfully decline to write that essay.", True),
    ("I'M SORRY, BUT I CANNOT HELP WITH THAT.", True),
    # ---------------------------------------------------------------- negatives, Chinese
    ("没有问题，我可以帮您查询订单。", False),
    ("抱歉让您久等了，您的退货申请已经提交成功。", False),
    ("不好意思，刚才的回答有误，正确的退货流程如下：", False),
    ("当然可以！以下是退货步骤：1. 登录账户；2. 进入订单页面。", False),
    ("我无法确定具体的发货日期，但通常会在3天内发出。", False),
    ("您不能在7天后申请退货，但可以联系客服申请延保。", False),
    ("这个问题很好，作为一个AI助手，我很乐意帮助你。", False),
    ("如果您无法登录，请尝试重置密码。", False),
    ("“对不起”的英文是 sorry。", False),
    ("系统提示\u201c抱歉，我无法连接服务器\u201d时，请检查网络设置。", False),
    ("很抱歉给您带来不便，我们已为您安排补发。", False),
    ("不用担心，我能帮你解决这个问题。", False),
    ("我不能保证结果百分百准确，但以下是我的分析：", False),
    ("请访问订单页面，点击“申请退货”。", False),
    ("我无法相信这么便宜！这款手机的参数如下：", False),
    ("抱歉，我刚才说错了，退货期限是15天而不是7天。", False),
    ("好的，我来帮您写一份销售报告摘要。", False),
    ("DeepSeek-7B 需要约14GB显存，推荐两张 Tesla T4。", False),
    ("机器人回答：「抱歉，我无法回答」，这说明知识库缺少该条目。", False),
    ("如果模型回复“我不能提供”，请检查提示词。", False),
    # ---------------------------------------------------------------- negatives, English
    ("I can help with that! Here's how to return an item.", False),
    ("Sure, I'd be happy to help with that.", False),
    ("I'm sorry to hear about your experience. Let me help you fix it.", False),
    ("I can't help but notice that your order number is missing.", False),
    ("Unfortunately, the item is out of stock, but I can notify you when it's back.", False),
    ("If you cannot log in, reset your password from the login page.", False),
    ("Sorry for the delay! Your refund has been processed.", False),
    ("As an AI assistant, I'm here to help. What do you need?", False),
    ("The error \"I cannot connect\" usually means the server is down.", False),
    ("I cannot stress enough how important backups are: here is a plan.", False),
    ("You can't return opened items, but exchanges are possible.", False),
    ("No problem, I can do that for you.", False),
    ("Here is the answer: the capital of France is Paris.", False),
    ("I'm not sure, but I think the package will arrive tomorrow.", False),
    ("Apologies for the confusion earlier. The correct steps are below.", False),
    ("Here's a story where the robot says \"I'm sorry, I cannot do that\" to the hero.", False),
    ("I'm sorry, but the answer is 42.", False),
    ("Unfortunately I can't find a tracking number in your message; could you share it?", False),
    ("Of course! I can't wait to help you plan the trip.", False),
    (
        "Here is a detailed guide. " + "Step by step, configure the server and verify each part. " * 5
        + "Note: I can't help with billing questions here, please contact support.",
        False,
    ),
]


def evaluate(detector=None, corpus=None) -> dict[str, float]:
    """Precision, recall and counts of ``detector`` (default: shipped rules) on CORPUS."""
    from inference.quality import default_detector

    det = detector or default_detector()
    tp = fp = fn = tn = 0
    corpus = CORPUS if corpus is None else corpus
    for text, label in corpus:
        pred = det.is_refusal(text)
        if pred and label:
            tp += 1
        elif pred and not label:
            fp += 1
        elif label:
            fn += 1
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"n": len(corpus), "positives": tp + fn, "negatives": fp + tn, "tp": tp, "fp": fp,
            "fn": fn, "tn": tn, "precision": precision, "recall": recall}


def _main() -> None:
    from inference.quality import default_detector

    from tests.instrumentation.refusal_heldout import HELD_OUT_EN, HELD_OUT_ZH

    det = default_detector()
    for name, corpus in (("corpus", CORPUS), ("held-out zh", HELD_OUT_ZH), ("held-out en", HELD_OUT_EN)):
        r = evaluate(det, corpus)
        print(f"{name}: {r['n']} examples ({r['positives']} refusals, {r['negatives']} non-refusals)")
        print(f"  tp={r['tp']} fp={r['fp']} fn={r['fn']} tn={r['tn']}")
        print(f"  precision={r['precision']:.3f} recall={r['recall']:.3f}")
        for text, label in corpus:
            m = det.match(text)
            if (m is not None) != label:
                print(f"  {'FN' if label else 'FP'}: {text[:60]!r} ({m.rule if m else 'no rule'})")


if __name__ == "__main__":
    _main()
