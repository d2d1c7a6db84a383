"""Mixed Chinese/English PII corpus: (input, expected masked output, expected counts).

Every valid number here was generated with the real validators (GB 11643 check character,
Luhn check digit); every near-miss was checked to fail them. ``RAW_PII`` lists the raw
values that must never appear in a log directory or on /metrics.
"""
from __future__ import annotations

CASES: list[tuple[str, str, dict[str, int]]] = [
    # --- phones
    ("我的手机号是13812345678，请回电", "我的手机号是[PHONE]，请回电", {"phone": 1}),
    ("联系电话：+86 139-1234-5678（工作日）", "联系电话：[PHONE]（工作日）", {"phone": 1}),
    ("call me at 8615912345678 tomorrow", "call me at [PHONE] tomorrow", {"phone": 1}),
    ("号码 0086 177 1234 5678 和 186 0000 1111", "号码 [PHONE] 和 [PHONE]", {"phone": 2}),
    ("手机13812345678邮箱abc@qq.com", "手机[PHONE]邮箱[EMAIL]", {"phone": 1, "email": 1}),
    # --- e-mail
    ("请发到 zhang.san+work@example.com.cn 谢谢", "请发到 [EMAIL] 谢谢", {"email": 1}),
    ("My email is John_Doe@Mail.Example.org.", "My email is [EMAIL].", {"email": 1}),
    ("QQ邮箱13812345678@qq.com也行", "QQ邮箱[EMAIL]也行", {"email": 1}),
    # --- resident ID (valid checksums)
    ("身份证号11010519491231002X，请核实", "身份证号[ID]，请核实", {"id": 1}),
    ("ID: 440308199001015010 (Shenzhen)", "ID: [ID] (Shenzhen)", {"id": 1}),
    ("证件号码为320582197811303450。", "证件号码为[ID]。", {"id": 1}),
    ("小写x也算31011519851231234x结束", "小写x也算[ID]结束", {"id": 1}),
    # --- bank cards (Luhn valid)
    ("银行卡号6222021234567894，户名张三", "银行卡号[CARD]，户名张三", {"card": 1}),
    ("card 4111 1111 1111 1111 exp 12/28", "card [CARD] exp 12/28", {"card": 1}),
    ("卡号：6212-2617-0200-1234-566", "卡号：[CARD]", {"card": 1}),
    ("Amex 378282246310005 on file", "Amex [CARD] on file", {"card": 1}),
    ("卡号 5300 0000 0000 0006 转账 200 元", "卡号 [CARD] 转账 200 元", {"card": 1}),
    ("JCB 3530111333300000 到期", "JCB [CARD] 到期", {"card": 1}),
    ("Diners 3056 930902 5904 ok", "Diners [CARD] ok", {"card": 1}),
    ("Discover 6011-0009-9013-9424.", "Discover [CARD].", {"card": 1}),
    ("Мир 2200123456789019 карта", "Мир [CARD] карта", {"card": 1}),
    ("工行老卡9558801234567890128", "工行老卡[CARD]", {"card": 1}),
    # --- IPv4
    ("服务器IP是192.168.1.100，端口8080", "服务器IP是[IP]，端口8080", {"ip": 1}),
    ("from 10.0.0.1 to 8.8.8.8.", "from [IP] to [IP].", {"ip": 2}),
    ("访问http://172.16.254.1:8000/v1失败", "访问http://[IP]:8000/v1失败", {"ip": 1}),
    # --- secrets
    ("我的key是sk-0123456789abcdef0123456789abcdef", "我的key是[SECRET]", {"secret": 1}),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc123", "Authorization: Bearer [SECRET]", {"secret": 1}),
    ("curl -H 'api_key=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5'", "curl -H 'api_key=[SECRET]'", {"secret": 1}),
    ("token: 3f9a0c7e5b1d2f4a6c8e0b1d3f5a7c9e", "token: [SECRET]", {"secret": 1}),
    ("数据库密码：Passw0rd!，别外传", "数据库密码：[SECRET]，别外传", {"secret": 1}),
    ("DeepSeek key sk-proj-AbCdEf1234567890GhIjKl", "DeepSeek key [SECRET]", {"secret": 1}),
    ("aws AKIAIOSFODNN7EXAMPLE ok", "aws [SECRET] ok", {"secret": 1}),
    ("export DEEPSEEK_API_KEY=\"sk-AbCdEf0123456789XyZ\"", "export DEEPSEEK_API_KEY=\"[SECRET]\"", {"secret": 1}),
    ("AUTHORIZATION: Basic dXNlcjpwYXNzd29yZA==", "AUTHORIZATION: Basic [SECRET]", {"secret": 1}),
    ("Password=Tr0ub4dor&3 and gh token ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
     "Password=[SECRET] and gh token [SECRET]", {"secret": 2}),
    # --- mixed
    (
        "客户王五，电话 13912345678，身份证 320582197811303450，卡 6222021234567894，登录IP 203.0.113.7",
        "客户王五，电话 [PHONE]，身份证 [ID]，卡 [CARD]，登录IP [IP]",
        {"phone": 1, "id": 1, "card": 1, "ip": 1},
    ),
]

#: Near-misses: must come out unchanged with no counts.
NEAR_MISSES: list[str] = [
    "订单号20251106140512已发货",                     # order number / timestamp (14 digits)
    "订单号 1234567890123456 请查收",                  # 16 digits, fails Luhn
    "时间戳 1762437912 和毫秒 1762437912000",          # Unix timestamps
    "发布于2025.11.06 14:04，浏览量 0",               # date
    "身份证440308199001015021有误",                   # invalid ID checksum (and fails Luhn)
    "卡号 6222021234567890 校验失败",                 # fails Luhn
    # Luhn-valid, but no card network issues this length with this prefix
    "运单号 412345678901234561，不是身份证",           # 18 digits starting with 4 (Visa: 13/16/19)
    "参考号 622123456789013",                          # 15 digits starting with 62 (UnionPay: 16-19)
    "流水号 7123456789012342 已入账",                 # no network starts with 7
    "version 1.2.3.4.5 released",                      # dotted version string
    "请升级到 v1.2.3.4",                              # v-prefixed version
    "IP 256.1.1.1 无效",                              # invalid octet
    "地址 010.0.0.1 和 1234.1.1.1 与 10.0.0.1234",       # leading zero / 4-digit groups
    "pi ≈ 3.1415.9265.3589",                           # long dotted digits
    "电话 12812345678 不是手机号",                     # 12x is not a mobile prefix
    "手机号1381234567少一位",                          # 10 digits
    "Bearer of good news",                             # "Bearer" as a word
    "max_tokens=4096, prompt_tokens: 1200",            # token counts
    "The task-force met; risk-free rate 3.5%",         # sk- inside words
    "akiaiosfodnn7example is lower case, not an AWS key id",  # token shape needs its case
    "git commit 0f3c2a9b8e7d6c5b4a39281706f5e4d3c2b1a098",  # a hash without key= context
    "库存 13 件，价格 5678 元，共 1,234,567 元",          # plain quantities
    "作者:很酷cat2025.11.06 14:04浏览量:0",            # a blog byline
    "section 4.1 and 5.2 of the guide",                # section numbers
    "在 2025-11-06 14:05:12 UTC 重启",                 # ISO timestamp
    "价格为 ¥1,200/月，响应 80ms",                      # cost table
]

#: Raw values from CASES that must never appear in any output.
RAW_PII: list[str] = [
    "13812345678", "139-1234-5678", "15912345678", "177 1234 5678", "186 0000 1111",
    "zhang.san+work@example.com.cn", "John_Doe@Mail.Example.org", "13812345678@qq.com",
    "11010519491231002X", "440308199001015010", "320582197811303450", "31011519851231234x",
    "6222021234567894", "4111 1111 1111 1111", "6212-2617-0200-1234-566", "378282246310005",
    "5300 0000 0000 0006", "192.168.1.100", "10.0.0.1", "8.8.8.8", "172.16.254.1",
    "sk-0123456789abcdef0123456789abcdef", "eyJhbGciOiJIUzI1NiJ9.abc123", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5",
    "3f9a0c7e5b1d2f4a6c8e0b1d3f5a7c9e", "Passw0rd!", "sk-proj-AbCdEf1234567890GhIjKl",
    "AKIAIOSFODNN7EXAMPLE", "13912345678", "203.0.113.7",
    "sk-AbCdEf0123456789XyZ", "dXNlcjpwYXNzd29yZA==", "Tr0ub4dor&3", "ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
]
