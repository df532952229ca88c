"""Writes tests/data/pii_corpus.jsonl, the labelled corpus of personal data.

    python tests/data/pii_corpus.make.py tests/data/pii_corpus.jsonl

Snippets are written with their personal data marked up: {{TYPE|value}}, or for phone
numbers {{PHONE@REGION|value}}. The script computes the exact spans, and checks every
labelled value with the libraries (a Luhn-valid card, an IBAN with correct check
digits, a valid-checksum national id, a phone number valid in its region), so the
corpus is made-up but valid. Generated values come from a seeded random generator:
running it again writes the same file. Snippets without markup are hard negatives.
"""
import ipaddress
import json
import random
import re
import sys
from collections import Counter

import phonenumbers
from stdnum import ean, luhn, verhoeff
from stdnum import iban as s_iban
from stdnum.be import nn
from stdnum.br import cpf
from stdnum.ch import ssn as ch_ssn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.pt import cc, nif
from stdnum.us import ssn

# ---- valid fake values, computed with python-stdnum --------------------------------
rng = random.Random(20261126)

def digits(n, first="0123456789"):
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(n - 1))

def make_iban(cc_, bban):
    bban = bban.replace(" ", "")
    number = cc_ + "00" + bban
    check = s_iban.calc_check_digits(number)
    value = cc_ + check + bban
    assert s_iban.is_valid(value, check_country=False), value
    return value

def spaced(value, n=4):
    return " ".join(value[i:i + n] for i in range(0, len(value), n))

def card(prefix, length):
    body = prefix + digits(length - len(prefix) - 1)
    value = body + luhn.calc_check_digit(body)
    assert luhn.is_valid(value)
    return value

def non_luhn(value):
    for d in "0123456789":
        v = value[:-1] + d
        if not luhn.is_valid(v):
            return v

def brute(valid, make):
    while True:
        v = make()
        if valid(v):
            return v

def de_idnr():
    return brute(idnr.is_valid, lambda: digits(11, "123456789"))
def fr_nir():
    base = rng.choice("12") + f"{rng.randint(50, 99):02d}{rng.randint(1, 12):02d}" + f"{rng.randint(1, 95):02d}" + digits(3) + digits(3)
    return base + nir.calc_check_digits(base)
def es_dni():
    b = digits(8); return b + dni.calc_check_digit(b)
def es_nie():
    b = rng.choice("XYZ") + digits(7); return b + nie.calc_check_digit(b)
def it_cf(stem):
    return stem + codicefiscale.calc_check_digit(stem)
def nl_bsn():
    return brute(bsn.is_valid, lambda: digits(9, "123456789"))
def pl_pesel():
    b = f"{rng.randint(50, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" + digits(4)
    return b + pesel.calc_check_digit(b)
def br_cpf():
    return brute(cpf.is_valid, lambda: digits(11))
def in_aadhaar():
    def make():
        body = digits(11, "23456789")
        return body + verhoeff.calc_check_digit(body)
    return brute(aadhaar.is_valid, make)
def ch_ahv():
    b = "756" + digits(9); return b + ean.calc_check_digit(b)
def be_nn():
    return brute(nn.is_valid, lambda: f"{rng.randint(50, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" + digits(5))
def pt_cc():
    b = digits(9) + rng.choice("ABCDEFGHZ") + rng.choice("ABCDEFGHZ")
    return b + cc.calc_check_digit(b)
def pt_nif():
    b = digits(8, "12"); return b + nif.calc_check_digit(b)
def us_ssn():
    return brute(ssn.is_valid, lambda: f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}")


def holdout_snippets():
    """Written after the detector was tuned: tagged 'holdout', measured apart."""
    H = []
    def add(lang, text, *tags):
        H.append((lang, ["holdout", *tags], text))

    c = [card("4532", 16), card("4539", 16), card("5425", 16), card("2221", 16),
         card("3714", 15), card("6011", 16), card("3566", 16), card("5019", 16),
         card("6521", 16), card("4", 19), card("62", 19), card("36", 14), card("4", 13)]
    dash = lambda x: "-".join(x[i:i + 4] for i in range(0, len(x), 4))
    amex_dash = lambda x: f"{x[:4]}-{x[4:10]}-{x[10:]}"
    fr_nir()  # (keeps the random sequence, and so the file, as it was)
    idnr = de_idnr(); ahv = ch_ahv(); bsn = nl_bsn(); pesel = pl_pesel(); cpf = br_cpf()
    aad = in_aadhaar(); dni = es_dni(); nie = es_nie(); ssn = us_ssn(); nif = pt_nif()
    cf = it_cf("BNCLRA92M45F205")
    bad = non_luhn(card("4929", 16))

    # positives
    add("en", "Ping me at {{EMAIL|dev.ops@infra.example.io}} — or DM me.")
    add("en", "cc: {{EMAIL|Team.Lead@Example.com}}; bcc: {{EMAIL|audit_2024@example.org}}")
    add("en", "my visa is {{CARD|" + S(c[0]) + "}} and it expires soon")
    add("en", "Use {{CARD|" + dash(c[1]) + "}} for the hotel.")
    add("en", "MC: {{CARD|" + c[2] + "}}")
    add("en", "New Mastercard {{CARD|" + S(c[3]) + "}}.")
    add("en", "Amex {{CARD|" + amex_dash(c[4]) + "}} on the account.")
    add("en", "Discover card: {{CARD|" + S(c[5]) + "}}")
    add("ja", "JCBカード {{CARD|" + S(c[6]) + "}} を使いました。", "unicode")
    add("da", "Dankort {{CARD|" + S(c[7]) + "}}")
    add("en", "RuPay {{CARD|" + c[8] + "}} declined")
    add("en", "19-digit Visa {{CARD|" + c[9] + "}}")
    add("zh", "银联卡号 {{CARD|" + c[10] + "}}", "unicode")
    add("en", "Diners {{CARD|" + c[11][:4] + "-" + c[11][4:10] + "-" + c[11][10:] + "}}")
    add("en", "old Visa {{CARD|" + c[12] + "}}")
    add("en", "Vancouver office {{PHONE@CA|+1 604 555 0123}}, local {{PHONE@CA|(604) 555-0199}}.")
    add("en", "Manchester: {{PHONE@GB|+44 161 496 0000}} or {{PHONE@GB|0161 496 0123}}.")
    add("en", "US cell {{PHONE@US|+1.415.555.0100}}")
    add("de", "Hamburg {{PHONE@DE|+49 40 12345678}}, Büro {{PHONE@DE|040 12345678}}.")
    add("fr", "Standard parisien {{PHONE@FR|+33 (0)1 99 00 12 34}}.")
    add("es", "Madrid {{PHONE@ES|+34 91 123 45 67}} o {{PHONE@ES|91 123 45 67}}.")
    add("it", "Milano {{PHONE@IT|+39 02 1234 5678}}, ufficio {{PHONE@IT|02 1234 5678}}.")
    add("nl", "Amsterdam {{PHONE@NL|+31 20 123 4567}}.")
    add("pl", "Komórka {{PHONE@PL|+48 600 123 456}} lub {{PHONE@PL|600-123-456}}.")
    add("pt", "Rio: {{PHONE@BR|+55 21 2345-6789}} ou {{PHONE@BR|(21) 2345-6789}}.")
    add("en", "Mumbai office {{PHONE@IN|+91 22 2345 6789}}.")
    add("de", "Handy Schweiz {{PHONE@CH|+41 79 123 45 67}}, national {{PHONE@CH|079 123 45 67}}.")
    add("fr", "Bruxelles {{PHONE@BE|+32 2 555 12 34}}.")
    add("en", "Cork mobile {{PHONE@IE|+353 87 123 4567}} / {{PHONE@IE|087 123 4567}}")
    add("sv", "Stockholm {{PHONE@SE|+46 8 123 456 78}}, {{PHONE@SE|08-123 456 78}}.")
    add("en", "Melbourne {{PHONE@AU|+61 3 9123 4567}} or {{PHONE@AU|(03) 9123 4567}}.")
    add("es", "CDMX {{PHONE@MX|+52 55 8765 4321}}")
    add("ko", "서울 {{PHONE@KR|+82 2-312-3456}}", "unicode")
    add("en", "Singapore {{PHONE@SG|+65 6123 4567}}, Hong Kong {{PHONE@HK|+852 2123 4567}}")
    add("en", "IBAN in lower case: {{IBAN|gb29 nwbk 6016 1331 9268 19}}", "tricky")
    add("de", "IBAN:{{IBAN|DE02120300000000202051}}")
    add("fi", "Tilinumero {{IBAN|FI21 1234 5600 0007 85}}")
    add("el", "IBAN {{IBAN|GR16 0110 1250 0000 0001 2300 695}}")
    add("cs", "Účet {{IBAN|CZ65 0800 0000 1920 0014 5399}}")
    add("hu", "Számla {{IBAN|HU42 1177 3016 1111 1018 0000 0000}}")
    add("ro", "Cont {{IBAN|RO49 AAAA 1B31 0075 9384 0000}}")
    add("hr", "IBAN {{IBAN|HR12 1001 0051 8630 0016 0}}")
    add("en", "Saudi account {{IBAN|SA03 8000 0000 6080 1016 7519}}, UAE {{IBAN|AE07 0331 2345 6789 0123 456}}")
    add("tr", "Hesap {{IBAN|TR33 0006 1005 1978 6457 8413 26}}")
    add("de", "Steuer-ID: {{NATIONAL_ID|" + idnr + "}}")
    add("de", "AHV-Nummer {{NATIONAL_ID|" + f"{ahv[:3]}.{ahv[3:7]}.{ahv[7:11]}.{ahv[11:]}" + "}}")
    add("nl", "mijn sofinummer is {{NATIONAL_ID|" + bsn + "}}")
    add("pl", "nr PESEL {{NATIONAL_ID|" + pesel + "}}")
    add("pt", "CPF: {{NATIONAL_ID|" + cpf + "}}")
    add("en", "Aadhaar card {{NATIONAL_ID|" + f"{aad[:4]} {aad[4:8]} {aad[8:]}" + "}}")
    add("es", "DNI {{NATIONAL_ID|" + dni + "}} y NIE {{NATIONAL_ID|" + nie[0] + "-" + nie[1:8] + "-" + nie[8] + "}}", "tricky")
    add("en", "Applicant SSN {{NATIONAL_ID|" + ssn + "}}")
    add("pt", "Número de contribuinte {{NATIONAL_ID|" + nif + "}}")
    add("it", "codice fiscale della signora: {{NATIONAL_ID|" + cf + "}}")
    add("en", "X-Forwarded-For: {{IP|203.0.113.195}}, {{IP|70.41.3.18}}, {{IP|150.172.238.178}}")
    add("en", "DNS at {{IP|2606:4700:4700::1111}} and ULA {{IP|fd12:3456:789a:1::1}}")
    add("en", "Open http://{{IP|192.0.2.1}}:8080/path in the browser.")
    add("en", "Connect to [{{IP|2001:db8::2}}] over SSH.")
    add("en", "Try {{IP|8.8.8.8}} as resolver")

    # negatives
    NEG = [
        "The SSN 078-05-1120 printed on wallet inserts was never valid.",
        "Upgrade to Version 1.10.0.2 today.",
        "Invoice 2023-0047-112 is overdue.",
        "Part no. 300-45-6789 is back in stock.",
        "Timestamp 2024-06-30T23:59:60Z had a leap second.",
        "Call of Duty 4 and 1 800 flowers.",
        "Mastercard ending in 4444, IBAN ending 3000.",
        "Card **** **** **** 1111 on file.",
        "Sort code 12-34-56, account 12345678.",
        "ABA routing 021000021 for wires.",
        "USD 1,234,567.89 or ¥12,345 or ₹ 1,23,456.",
        "Pages 1234-1567 of the report.",
        "Patent US 10,123,456 B2 was granted.",
        "DOI 10.1000/182 resolves to the handbook.",
        "Berlin lies at 52.5200, 13.4050.",
        "Dates 2024/06/30, 30.06.2024 and June 30, 2024 14:00.",
        "Shift 14:00-15:30, Q3 2024, ISO week 2024-W27.",
        "Bankleitzahl 37040044, Konto 532013000.",
        "Order ID: 114-3941689-8772232 has shipped.",
        "USPS tracking 9400 1000 0000 0000 0000 00.",
        "Serial " + S(bad) + " is printed on the back.",
        "Model number 2024 3301 8812 was discontinued.",
        "Die Artikelnummer 0815-4711-23 ist ausverkauft.",
        "Le dossier 75 012 345 678 est clos.",
        "Pedido número 20240630123 confirmado.",
        "Bestelnummer 9876543210 verzonden.",
        "Numer zamówienia 501 234 567 89 z dnia 1.07.2024.",
        "Protocolo 2024.06.30.00123 registrado.",
        "Matrix [[1, 2], [3, 4]] and vector (5, 6, 7).",
        "Build 20240630.1 of the app, hash 4f9d2c1a.",
        "Listening on 0.0.0.0:8000 and [::]:8000.",
        "Range 10-20 and 30 - 40 and 50 to 60.",
        "She scored 98.6 % on 12/06.",
        "Kilometre stand 123 456 km.",
        "The placeholder [PHONE_2] and [iban_1] are template fields.",
    ]
    LANGS = {"Die Artikelnummer": "de", "Le dossier": "fr", "Pedido número": "es", "Bestelnummer": "nl",
             "Numer zamówienia": "pl", "Protocolo": "pt", "Bankleitzahl": "de"}
    for text in NEG:
        lang = next((l for k, l in LANGS.items() if text.startswith(k)), "en")
        H.append((lang, ["holdout", "hard_negative"], text))
    return H


S = spaced

# ---- values -------------------------------------------------------------------
IB = {
    "DE": make_iban("DE", "370400440532013000"), "DE2": make_iban("DE", "100100100123456789"),
    "DE3": make_iban("DE", "500105175407324931"),
    "GB": "GB29NWBK60161331926819", "GB2": make_iban("GB", "BARC20000055779911"),
    "FR": "FR1420041010050500013M02606", "FR2": "FR7630006000011234567890189",
    "ES": "ES9121000418450200051332", "ES2": "ES7921000813610123456789",
    "IT": "IT60X0542811101000000123456", "NL": "NL91ABNA0417164300",
    "NL2": make_iban("NL", "RABO0300065264"), "BE": "BE68539007547034",
    "PL": "PL61109010140000071219812874", "PT": "PT50000201231234567890154",
    "CH": "CH9300762011623852957", "AT": "AT611904300234573201",
    "IE": "IE29AIBK93115212345678", "SE": "SE4550000000058398257466",
    "LU": "LU280019400644750000", "DK": "DK5000400440116243", "NO": "NO9386011117947",
    "BR": "BR1800360305000010009795493C1", "MT": "MT84MALT011000012345MTLCAST001S",
}
for k, val in IB.items():
    assert s_iban.is_valid(val, check_country=False), (k, val)
CARDS = ["4111111111111111", "4242424242424242", "5555555555554444", "5105105105105100",
         "378282246310005", "371449635398431", "6011111111111117", "3530111333300000",
         "30569309025904", "4012888888881881", "2223003122003222", "6200000000000005",
         "4000056655665556", "5200828282828210", "6759649826438453", "4917610000000000003",
         card("4", 16), card("51", 16), card("37", 15), card("6011", 16),
         card("4", 16), card("55", 16), card("2720", 16), card("36", 14)]
for c in CARDS:
    assert luhn.is_valid(c), c
C = CARDS
def amex(x): return f"{x[:4]} {x[4:10]} {x[10:]}"
def dashed(x): return "-".join(x[i:i + 4] for i in range(0, len(x), 4))

SSN = [us_ssn() for _ in range(4)]
IDNR = [de_idnr() for _ in range(3)]
NIR = [fr_nir() for _ in range(3)]
DNI = [es_dni() for _ in range(3)]
NIE = [es_nie() for _ in range(2)]
CF = [it_cf("RSSMRA85T10A562"), it_cf("BNCLRA92M45F205"), it_cf("VRDGPP70A01H501")]
BSN = [nl_bsn() for _ in range(3)]
PESEL = [pl_pesel() for _ in range(3)]
CPF = [br_cpf() for _ in range(3)]
AADHAAR = [in_aadhaar() for _ in range(2)]
AHV = [ch_ahv() for _ in range(2)]
NN = [be_nn() for _ in range(2)]
PTCC = [pt_cc() for _ in range(2)]
PTNIF = [pt_nif() for _ in range(2)]
def cpf_f(x): return f"{x[:3]}.{x[3:6]}.{x[6:9]}-{x[9:]}"
def ahv_f(x): return f"{x[:3]}.{x[3:7]}.{x[7:11]}.{x[11:]}"
def nn_f(x): return f"{x[:2]}.{x[2:4]}.{x[4:6]}-{x[6:9]}.{x[9:]}"
def nir_f(x): return f"{x[0]} {x[1:3]} {x[3:5]} {x[5:7]} {x[7:10]} {x[10:13]} {x[13:]}"
def idnr_f(x): return f"{x[:2]} {x[2:5]} {x[5:8]} {x[8:]}"
def aad_f(x): return f"{x[:4]} {x[4:8]} {x[8:]}"
def ptcc_f(x): return f"{x[:8]} {x[8]} {x[9:]}"
# invalid variants (hard negatives)
def bad_iban(x): return x[:-1] + ("1" if x[-1] != "1" else "2")
BAD_DNI = DNI[0][:-1] + ("A" if DNI[0][-1] != "A" else "B")
BAD_CPF = cpf_f(CPF[0][:-1] + str((int(CPF[0][-1]) + 1) % 10))
BAD_PESEL = PESEL[0][:-1] + str((int(PESEL[0][-1]) + 1) % 10)
BAD_CARD = [non_luhn("4111111111111111"), non_luhn("5555555555554444"), non_luhn("4242424242424242"),
            non_luhn("1234567812345678"), non_luhn("6011111111111117")]

# ---- snippets: (lang, tags, text) --------------------------------------------
SN = []
def add(lang, text, *tags):
    SN.append((lang, list(tags), text))

# English
add("en", "Hi, I'm Ada. You can reach me at {{EMAIL|ada.lovelace@example.com}} or on {{PHONE@US|(415) 555-2671}}.")
add("en", "Please send the invoice to {{EMAIL|billing+acme-2024@mail.example.co.uk}} by Friday.", "tricky")
add("en", "My card number is {{CARD|" + S(C[0]) + "}}, expiry 12/27, CVV I won't share.", "tricky")
add("en", "Charge it to {{CARD|" + dashed(C[2]) + "}} please.", "tricky")
add("en", "The Amex on file is {{CARD|" + amex(C[4]) + "}}.", "tricky")
add("en", "Can you check why {{CARD|" + C[1] + "}} was declined yesterday?")
add("en", "Call me on {{PHONE@US|+1 212-555-0198}} after 5pm, or text {{PHONE@US|415.555.0132}}.", "tricky")
add("en", "Our London office: {{PHONE@GB|+44 20 7946 0958}}, fax {{PHONE@GB|020 7946 0959}}.")
add("en", "My SSN is {{NATIONAL_ID|" + SSN[0] + "}} — is it safe to put it in the tax form?")
add("en", "The server at {{IP|203.0.113.45}} keeps refusing SSH connections from {{IP|198.51.100.7}}.")
add("en", "IPv6 works: ping {{IP|2001:db8:85a3::8a2e:370:7334}} answers, but {{IP|fe80::1ff:fe23:4567:890a}} doesn't.", "tricky")
add("en", "Wire the deposit to {{IBAN|" + S(IB["GB"]) + "}} (reference: flat 4B).", "tricky")
add("en", "Forward everything to {{EMAIL|John.Smith@Sub.Example.ORG}}.", "tricky")
add("en", "Contact: <{{EMAIL|support-team@help.example.net}}>")
add("en", "mailto:{{EMAIL|first.last+filter@example.com}}", "tricky")
add("en", "My social security number is {{NATIONAL_ID|" + SSN[1] + "}}, my wife's is {{NATIONAL_ID|" + SSN[2] + "}}.")
add("en", "Phone: {{PHONE@GB|07911 123456}}")
add("en", "Can you write a polite email to {{EMAIL|m.jones@example.edu}} asking to move our call to Tuesday?")
add("en", "The IP {{IP|10.0.0.12}} is my laptop, {{IP|192.168.1.1}} the router.")
add("en", "my number is {{PHONE@US|+1 (650) 253-0000}} and my email {{EMAIL|ceo@startup.example}}")
add("en", "Two cards: {{CARD|" + S(C[16]) + "}} and {{CARD|" + dashed(C[17]) + "}}.")
add("en", "Diners card {{CARD|" + C[8][:4] + " " + C[8][4:10] + " " + C[8][10:] + "}} still works?", "tricky")
add("en", "Indian customer, Aadhaar {{NATIONAL_ID|" + aad_f(AADHAAR[0]) + "}}, mobile {{PHONE@IN|+91 98765 43210}}.")
add("en", "Reach our Sydney desk on {{PHONE@AU|+61 2 9374 4000}} or {{PHONE@AU|0412 345 678}}.")
add("en", "Dublin: {{PHONE@IE|+353 1 234 5678}}; Irish IBAN {{IBAN|" + S(IB["IE"]) + "}}.")
add("en", "Login failed from {{IP|2a00:1450:4001:81b::200e}} at 03:14 UTC.")
add("en", "Client address {{IP|::ffff:192.0.2.128}} is an IPv4-mapped one.", "tricky")
add("en", "Service listens on [{{IP|2001:db8::1}}]:8443 and {{IP|192.0.2.10}}:443.", "tricky")
add("en", "Send the Tokyo office a note: {{PHONE@JP|+81 3-1234-5678}}.")
add("en", "Shenzhen supplier: {{PHONE@CN|+86 138 0013 8000}}, email {{EMAIL|sales@factory.example.cn}}.")
add("en", "Moscow contact {{PHONE@RU|+7 912 345-67-89}}.")
add("en", "Cape Town: {{PHONE@ZA|+27 82 123 4567}}; Dubai: {{PHONE@AE|+971 50 123 4567}}.")
add("en", "Istanbul number {{PHONE@TR|+90 532 123 45 67}} works on WhatsApp.")
add("en", "Toll free {{PHONE@US|1-800-275-2273}}")
add("en", "Reply to {{EMAIL|o'brien@example.ie}} please.", "tricky")
add("en", "Emails: {{EMAIL|a@b.example.com}}, {{EMAIL|x_y.z@example.museum}}.")
add("en", "Is {{EMAIL|jürgen.müller@beispiel.example}} a valid address?", "tricky", "unicode")
add("en", "Text me: {{PHONE@US|4155550132}}", "tricky")
# German
add("de", "Hallo, meine E-Mail ist {{EMAIL|max.mustermann@beispiel.de}} und mein Handy {{PHONE@DE|0171 1234567}}.")
add("de", "Bitte überweisen Sie auf {{IBAN|" + S(IB["DE"]) + "}} bis zum 15.03.2024.", "tricky")
add("de", "IBAN: {{IBAN|" + IB["DE2"] + "}}, BIC COBADEFFXXX.")
add("de", "Rufen Sie mich unter {{PHONE@DE|+49 (0)30 901820}} an.", "tricky")
add("de", "Tel.: {{PHONE@DE|030/901820}}, Fax: {{PHONE@DE|030/901821}}", "tricky")
add("de", "Meine Festnetznummer ist {{PHONE@DE|0049 30 23125000}}.", "tricky")
add("de", "Handy: {{PHONE@DE|01711234567}}", "tricky")
add("de", "Meine Steuer-ID lautet {{NATIONAL_ID|" + IDNR[0] + "}}.")
add("de", "Steuerliche Identifikationsnummer: {{NATIONAL_ID|" + idnr_f(IDNR[1]) + "}}", "tricky")
add("de", "Kreditkarte {{CARD|" + S(C[3]) + "}}, gültig bis 08/26.")
add("de", "Der Router hat die Adresse {{IP|192.168.178.1}}, mein NAS {{IP|192.168.178.20}}.")
add("de", "Schreib an {{EMAIL|anna-lena.schmidt@uni-hamburg.example}} wegen der Hausarbeit.")
add("de", "Mobil {{PHONE@DE|+49 151 23456789}}, privat {{PHONE@DE|089 1234567}}.")
add("de", "Bitte die Rechnung an {{EMAIL|buchhaltung@firma.example.de}} schicken, Konto {{IBAN|" + S(IB["DE3"]) + "}}.")
add("de", "Österreich: {{PHONE@AT|+43 664 1234567}}, IBAN {{IBAN|" + S(IB["AT"]) + "}}.")
add("de", "Wien, Tel. {{PHONE@AT|0664 1234567}}")
add("de", "Schweiz: {{PHONE@CH|+41 44 668 18 00}}, AHV-Nr. {{NATIONAL_ID|" + ahv_f(AHV[0]) + "}}.")
add("de", "Zürich {{PHONE@CH|044 668 18 00}}, Konto {{IBAN|" + S(IB["CH"]) + "}}.")
add("de", "Karte {{CARD|" + C[12] + "}} wurde abgelehnt.")
add("de", "Für Rückfragen: {{EMAIL|Kundenservice@Shop.Example.DE}} oder {{PHONE@DE|0800 3301000}}.")
add("de", "Die Steuer-Id {{NATIONAL_ID|" + IDNR[2] + "}} steht auf dem Bescheid.")
add("de", "Überweisung an {{IBAN|" + IB["DE"].lower() + "}} ist gescheitert.", "tricky")
# French
add("fr", "Bonjour, écrivez-moi à {{EMAIL|claire.dupont@exemple.fr}} ou appelez le {{PHONE@FR|06 12 34 56 78}}.")
add("fr", "Mon numéro : {{PHONE@FR|+33 6 12 34 56 78}}.")
add("fr", "Le standard : {{PHONE@FR|01 99 00 12 34}}, ou {{PHONE@FR|01.99.00.12.35}}.", "tricky")
add("fr", "Virement sur le compte {{IBAN|" + S(IB["FR"]) + "}} svp.")
add("fr", "IBAN : {{IBAN|" + S(IB["FR2"]) + "}}")
add("fr", "Mon numéro de sécurité sociale est {{NATIONAL_ID|" + nir_f(NIR[0]) + "}}.", "tricky")
add("fr", "NIR {{NATIONAL_ID|" + NIR[1] + "}} à vérifier.")
add("fr", "Ma carte bleue {{CARD|" + S(C[13]) + "}} a expiré.")
add("fr", "Contactez {{EMAIL|service.client@boutique.exemple.fr}} pour un retour.")
add("fr", "Belgique : {{PHONE@BE|+32 470 12 34 56}}, numéro national {{NATIONAL_ID|" + nn_f(NN[0]) + "}}.")
add("fr", "Compte belge {{IBAN|" + S(IB["BE"]) + "}}, tél. {{PHONE@BE|0470 12 34 57}}.")
add("fr", "Luxembourg : IBAN {{IBAN|" + S(IB["LU"]) + "}}.")
add("fr", "L'adresse IP {{IP|203.0.113.99}} apparaît dans les journaux.")
add("fr", "Appelez-moi au {{PHONE@FR|0612345678}}.", "tricky")
add("fr", "Genève : {{PHONE@CH|+41 22 345 67 89}}")
# Spanish
add("es", "Mi correo es {{EMAIL|lucia.garcia@ejemplo.es}} y mi móvil {{PHONE@ES|612 34 56 78}}.")
add("es", "Llámame al {{PHONE@ES|+34 612 345 678}} cuando puedas.")
add("es", "Oficina en Madrid: {{PHONE@ES|912 345 678}}.")
add("es", "Mi DNI es {{NATIONAL_ID|" + DNI[0] + "}}.")
add("es", "NIE: {{NATIONAL_ID|" + NIE[0] + "}}, DNI del cónyuge {{NATIONAL_ID|" + DNI[1][:8] + "-" + DNI[1][8:] + "}}.", "tricky")
add("es", "Transferencia a {{IBAN|" + S(IB["ES"]) + "}} con concepto alquiler.")
add("es", "Cuenta: {{IBAN|" + IB["ES2"] + "}}")
add("es", "Pagué con la tarjeta {{CARD|" + dashed(C[10]) + "}}.")
add("es", "México: {{PHONE@MX|+52 55 1234 5678}}, correo {{EMAIL|ventas@tienda.ejemplo.mx}}.")
add("es", "El servidor {{IP|192.0.2.55}} no responde.")
add("es", "móvil: {{PHONE@ES|612345678}}", "tricky")
# Italian
add("it", "Scrivimi a {{EMAIL|marco.rossi@esempio.it}} o chiamami al {{PHONE@IT|333 123 4567}}.")
add("it", "Il numero fisso è {{PHONE@IT|06 6982 1234}}, dall'estero {{PHONE@IT|+39 06 6982 1234}}.")
add("it", "Il mio codice fiscale è {{NATIONAL_ID|" + CF[0] + "}}.")
add("it", "Codice fiscale: {{NATIONAL_ID|" + CF[1] + "}}; IBAN {{IBAN|" + S(IB["IT"]) + "}}.")
add("it", "Bonifico su {{IBAN|" + IB["IT"] + "}}, causale affitto.")
add("it", "Carta {{CARD|" + S(C[14]) + "}} bloccata.")
add("it", "Cellulare {{PHONE@IT|+39 347 123 4567}}.")
add("it", "CF del titolare {{NATIONAL_ID|" + CF[2].lower() + "}}.", "tricky")
add("it", "L'indirizzo {{IP|2001:db8:0:0:1:0:0:1}} è il nostro gateway.", "tricky")
# Dutch
add("nl", "Mijn e-mail is {{EMAIL|j.de.vries@voorbeeld.nl}}, mobiel {{PHONE@NL|06-12345678}}.")
add("nl", "Bel ons op {{PHONE@NL|020-1234567}} of {{PHONE@NL|+31 6 12345678}}.")
add("nl", "Maak het over naar {{IBAN|" + S(IB["NL"]) + "}} t.n.v. Stichting X.")
add("nl", "Rekening {{IBAN|" + IB["NL2"] + "}}")
add("nl", "Mijn BSN is {{NATIONAL_ID|" + BSN[0] + "}}.")
add("nl", "Burgerservicenummer: {{NATIONAL_ID|" + BSN[1] + "}}")
add("nl", "Betaald met {{CARD|" + S(C[19]) + "}}.")
add("nl", "Antwerpen: {{PHONE@BE|+32 3 234 56 78}}")
add("nl", "De printer heeft IP {{IP|172.16.4.23}}.")
# Polish
add("pl", "Mój e-mail to {{EMAIL|jan.kowalski@przyklad.pl}}, telefon {{PHONE@PL|+48 512 345 678}}.")
add("pl", "Zadzwoń pod {{PHONE@PL|512 345 678}} albo {{PHONE@PL|22 123 45 67}}.")
add("pl", "Numer PESEL: {{NATIONAL_ID|" + PESEL[0] + "}}.")
add("pl", "PESEL {{NATIONAL_ID|" + PESEL[1] + "}}, konto {{IBAN|" + S(IB["PL"]) + "}}.")
add("pl", "Przelew na {{IBAN|" + IB["PL"] + "}} do piątku.")
add("pl", "Karta {{CARD|" + S(C[20]) + "}} wygasła.")
add("pl", "Serwer {{IP|195.64.12.8}} jest niedostępny.")
# Portuguese
add("pt", "O meu email é {{EMAIL|ana.silva@exemplo.pt}} e o telemóvel {{PHONE@PT|912 345 678}}.")
add("pt", "Ligue para {{PHONE@PT|+351 21 123 4567}}.")
add("pt", "NIF {{NATIONAL_ID|" + PTNIF[0] + "}}, IBAN {{IBAN|" + S(IB["PT"]) + "}}.")
add("pt", "Cartão de Cidadão {{NATIONAL_ID|" + ptcc_f(PTCC[0]) + "}}.", "tricky")
add("pt", "Meu CPF é {{NATIONAL_ID|" + cpf_f(CPF[0]) + "}} e meu celular {{PHONE@BR|(11) 91234-5678}}.")
add("pt", "CPF {{NATIONAL_ID|" + CPF[1] + "}}, telefone {{PHONE@BR|+55 11 91234-5678}}.")
add("pt", "Conta brasileira {{IBAN|" + S(IB["BR"]) + "}}.")
add("pt", "Cartão {{CARD|" + dashed(C[21]) + "}} recusado.")
add("pt", "Email: {{EMAIL|atendimento@loja.exemplo.com.br}}")
# Others
add("sv", "Ring mig på {{PHONE@SE|070-123 45 67}} eller mejla {{EMAIL|erik@exempel.se}}. Konto {{IBAN|" + S(IB["SE"]) + "}}.")
add("da", "Ring {{PHONE@DK|+45 32 12 34 56}}, IBAN {{IBAN|" + S(IB["DK"]) + "}}.")
add("no", "Telefon {{PHONE@NO|+47 412 34 567}}, konto {{IBAN|" + IB["NO"] + "}}.")
add("mt", "IBAN {{IBAN|" + S(IB["MT"]) + "}}")
add("en", "Card {{CARD|" + C[15] + "}} (19 digits) and {{CARD|" + S(C[22]) + "}}.", "tricky")
add("en", "Amex {{CARD|" + C[18] + "}} and Discover {{CARD|" + S(C[6]) + "}}.")
add("en", "JCB {{CARD|" + S(C[7]) + "}}, UnionPay {{CARD|" + S(C[11]) + "}}.")
add("en", "Diners {{CARD|" + C[23] + "}}")
add("en", "Swiss social security (AHV) {{NATIONAL_ID|" + ahv_f(AHV[1]) + "}}")
add("en", "Belgian national number {{NATIONAL_ID|" + nn_f(NN[1]) + "}}")
add("en", "Aadhaar number: {{NATIONAL_ID|" + AADHAAR[1] + "}}")
add("en", "Spanish NIE {{NATIONAL_ID|" + NIE[1] + "}} and DNI {{NATIONAL_ID|" + DNI[2] + "}}")
add("en", "French NIR {{NATIONAL_ID|" + nir_f(NIR[2]) + "}}")
add("en", "Dutch BSN {{NATIONAL_ID|" + BSN[2] + "}}, Polish PESEL {{NATIONAL_ID|" + PESEL[2] + "}}")
add("en", "Brazilian CPF {{NATIONAL_ID|" + cpf_f(CPF[2]) + "}}")
add("en", "SSN: {{NATIONAL_ID|" + SSN[3].replace("-", " ") + "}}", "tricky")
add("pt", "Cartão de Cidadão n.º {{NATIONAL_ID|" + PTCC[1] + "}}, NIF {{NATIONAL_ID|" + PTNIF[1] + "}}")
# Multi-entity, multi-line
add("en", "Name: Ada Lovelace\nEmail: {{EMAIL|ada@example.com}}\nPhone: {{PHONE@GB|+44 7911 123456}}\nIBAN: {{IBAN|" + S(IB["GB2"]) + "}}\nCard: {{CARD|" + S(C[0]) + "}}")
add("de", "Kontaktdaten:\n- {{EMAIL|m.mueller@example.de}}\n- {{PHONE@DE|+49 89 12345678}}\n- {{IBAN|" + S(IB["DE2"]) + "}}")
add("fr", "Coordonnées : {{EMAIL|p.martin@exemple.fr}} / {{PHONE@FR|+33 1 99 00 12 36}} / {{IBAN|" + IB["FR"] + "}}")
add("en", "Same email twice: {{EMAIL|ada@example.com}} and again {{EMAIL|ada@example.com}}.")
add("en", "Log line: 2024-01-15T10:30:00Z client={{IP|198.51.100.23}} user={{EMAIL|bob@example.org}} status=200")
add("en", "Ünïcödé test — 電話: {{PHONE@JP|+81 90-1234-5678}}, メール: {{EMAIL|taro@example.jp}}", "unicode")
add("ru", "Позвоните мне: {{PHONE@RU|+7 495 123-45-67}}, почта {{EMAIL|ivan@example.ru}}", "unicode")
add("en", "«{{EMAIL|quote@example.com}}» and “{{PHONE@US|+1 415 555 0111}}”", "unicode")
add("en", "JSON: {\"email\": \"{{EMAIL|json.user@example.com}}\", \"ip\": \"{{IP|203.0.113.7}}\"}")
add("en", "CSV row: 42,{{EMAIL|row42@example.com}},{{PHONE@US|+14155550142}},active", "tricky")

# ---- hard negatives ---------------------------------------------------------------
NEG = [
    ("en", "Order #100234567 shipped on 2024-03-15."),
    ("en", "Your order 123456789 will arrive in 3-5 business days."),
    ("en", "Invoice INV-2024-000183, total $2,499.99 due 03/15/2024."),
    ("en", "Tracking number 1Z999AA10123456784 is in transit."),
    ("en", "Upgrade from version 2.14.3 to 3.0.1 before Friday."),
    ("en", "Python 3.11.7 and Node 20.10.0 are installed."),
    ("en", "Chrome 120.0.6099.109 crashes on Windows 10.0.19045."),
    ("en", "The meeting is at 10:30:45 on 2024-01-15T10:30:00Z."),
    ("en", "Epoch 1700000000 corresponds to November 2023."),
    ("en", "Population of Germany: 83 200 000 (2023)."),
    ("en", "The test card " + S(BAD_CARD[0]) + " must be rejected."),
    ("en", "Reference " + BAD_CARD[1] + " is not a card."),
    ("en", "Serial " + S(BAD_CARD[3]) + " on the box."),
    ("en", "Beverly Hills 90210, room 1204, flight LH 1234."),
    ("en", "London SW1A 1AA is the postcode."),
    ("en", "ISBN 978-3-16-148410-0 and EAN 4006381333931."),
    ("en", "The value of pi is 3.14159265358979."),
    ("en", "Subnet mask 255.255.255.0, default route 0.0.0.0, loopback 127.0.0.1 and ::1.", "policy"),
    ("en", "999.10.1.1 and 256.100.50.25 are not IP addresses."),
    ("en", "In C++ use std::vector<int> and std::map."),
    ("en", "Timestamps 12:30:00 and 23:59:59.999 are fine."),
    ("en", "The placeholder [EMAIL_1] in my template should stay as is."),
    ("en", "Use the format user@domain for logins (no TLD)."),
    ("en", "Price: 1,299.00 USD; discount 15%; tax 8.875%."),
    ("en", "Ticket #98765432 was closed."),
    ("en", "Coordinates 48.8584, 2.2945 and altitude 330 m."),
    ("en", "Error code 0x80070005 at address 0x7ffd5e8c."),
    ("en", "SHA-256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    ("en", "UUID 123e4567-e89b-12d3-a456-426614174000"),
    ("en", "The account number format is CCkk BBAN, e.g. two letters and digits."),
    ("en", "Lottery numbers: 4 8 15 16 23 42."),
    ("en", "Batch 20240115103000 finished."),
    ("en", "Phone extension 4521, room 3.14."),
    ("en", "Score: 1234-5678 final."),
    ("en", "Between 1990 and 2024 the index rose from 1,000 to 16,500."),
    ("en", "An order number like 4151234567 is not a phone without context."),
    ("en", "Git commit a1b2c3d4e5f6 on branch release-2024.03."),
    ("en", "The ratio 16:9 and 4:3 screens; 1080p at 60Hz."),
    ("en", "Email me? No, just @mention me in the channel."),
    ("en", "Invalid SSN 000-12-3456 and 666-45-6789 are never issued."),
    ("de", "Bestellnummer 4711-0815-2024 vom 15.03.2024."),
    ("de", "Die Rechnung über 1.299,00 € ist am 31.12.2023 fällig."),
    ("de", "10115 Berlin, Hausnummer 42, Etage 3."),
    ("de", "Kundennummer 030123456 bitte angeben.", "tricky"),
    ("de", "Falsche IBAN: " + S(bad_iban(IB["DE"])) + "."),
    ("de", "BIC COBADEFFXXX, BLZ 370 400 44."),
    ("de", "Kontonummer 0532013000 bei der Commerzbank.", "tricky"),
    ("de", "Version 5.15.0 des Kernels, Build 20231204."),
    ("de", "Termin am 12.05.2024 um 14:30 Uhr."),
    ("de", "Aktenzeichen 2 BvR 1234/19."),
    ("de", "Die Steuernummer-Vorlage: 11 stellige Zahl, z.B. 12345678901 ohne Bedeutung."),
    ("fr", "Commande n° 2024-118734 livrée le 12/05/2023 à 14h30."),
    ("fr", "Prix : 1 299,00 € TTC, soit 1 082,50 € HT."),
    ("fr", "75001 Paris, 3e étage, code 4B12."),
    ("fr", "IBAN invalide : " + S(bad_iban(IB["FR"]))),
    ("fr", "Le vol AF 1234 part à 10 h 45."),
    ("fr", "Référence dossier 2023/45871-B."),
    ("es", "Pedido 88231-A enviado el 15/03/2024."),
    ("es", "Precio: 1.234,56 € IVA incluido."),
    ("es", "28013 Madrid, planta 4, puerta B."),
    ("es", "DNI de ejemplo con letra incorrecta: " + BAD_DNI + "."),
    ("es", "Cuenta inválida " + bad_iban(IB["ES"]) + "."),
    ("it", "Ordine 557812390 del 15/03/2024."),
    ("it", "Totale 2.345,67 euro, sconto 10%."),
    ("it", "00184 Roma, interno 12."),
    ("it", "Versione 1.2.3 del software, build 4567."),
    ("nl", "Bestelling 20231187 is onderweg."),
    ("nl", "1012 AB Amsterdam, huisnummer 12-3."),
    ("nl", "Totaal € 1.499,95 incl. btw."),
    ("nl", "Ongeldige IBAN " + S(bad_iban(IB["NL"])) + "."),
    ("nl", "Ordernummer 123456782 zonder betekenis.", "tricky"),
    ("pl", "Zamówienie nr 123456789 z dnia 15.03.2024."),
    ("pl", "00-950 Warszawa, cena 12.345,67 zł."),
    ("pl", "Nieprawidłowy PESEL " + BAD_PESEL + "."),
    ("pl", "Faktura VAT 2024/03/0042."),
    ("pt", "Pedido 2024-55512 enviado. Total R$ 3.450,90."),
    ("pt", "CEP 01310-100, São Paulo."),
    ("pt", "CPF inválido " + BAD_CPF + "."),
    ("pt", "Versão 4.2.1, compilação 20240315."),
    ("en", "Card-like but invalid: " + dashed(BAD_CARD[2]) + "."),
    ("en", "Account 12345678 sort code 20-00-00."),
    ("en", "The year range 2019-2024 and pages 123-456."),
    ("en", "Call stack depth 65535, port 8080, PID 31337."),
    ("en", "Measurement 12 34 56 78 mm (four readings)."),
    ("en", "CVE-2024-3094 affects xz 5.6.0 and 5.6.1."),
    ("en", "Dates: 31/12/2023, 2023-12-31, Dec 31 2023."),
    ("en", "IPv6 prefix notation 2001:db8::/32 needs care.", "tricky"),
    ("en", "MAC address 00:1A:2B:3C:4D:5E is hardware, not IP."),
    ("en", "Temperature -12.5 °C, humidity 45.3 %, pressure 1013.25 hPa."),
    ("en", "Random digits 8827361542 and 73628190 appear in the log."),
    ("en", "Random digits " + BAD_CARD[4] + " appear in the log."),
    ("en", "Invalid IBAN " + bad_iban(IB["GB"]) + " in the form."),
    ("de", "Invalid IBAN DE00 1234 5678 9012 3456 78."),
    ("en", "GTIN 00012345678905, UPC 036000291452."),
    ("en", "Version string v1.2.3.4 and build 2024.03.15.1."),
]
for item in NEG:
    lang, text, *tags = item
    SN.append((lang, ["hard_negative", *tags], text))

SN.extend(holdout_snippets())

# ---- build ------------------------------------------------------------------------
MARK = re.compile(r"\{\{(\w+)(?:@(\w+))?\|(.*?)\}\}")
VALID_NID = [ssn.is_valid, idnr.is_valid, nir.is_valid, dni.is_valid, nie.is_valid,
             codicefiscale.is_valid, bsn.is_valid, pesel.is_valid, cpf.is_valid, aadhaar.is_valid,
             ch_ssn.is_valid, nn.is_valid, cc.is_valid, nif.is_valid]

def check(kind, region, value):
    if kind == "EMAIL":
        assert "@" in value
    elif kind == "CARD":
        assert luhn.is_valid(re.sub(r"[ -]", "", value)), value
    elif kind == "IBAN":
        assert s_iban.is_valid(value, check_country=False), value
    elif kind == "IP":
        ipaddress.ip_address(value)
    elif kind == "NATIONAL_ID":
        assert any(f(value) or f(value.replace(" ", "-")) for f in VALID_NID), value
    elif kind == "PHONE":
        assert region, value
        n = phonenumbers.parse(value, region)
        assert phonenumbers.is_valid_number(n), (region, value)
    else:
        raise AssertionError(kind)

out = []
for number, (lang, tags, marked) in enumerate(SN, 1):
    text, spans, pos = [], [], 0
    length = 0
    for m in MARK.finditer(marked):
        before = marked[pos:m.start()]
        text.append(before); length += len(before)
        kind, region, value = m.groups()
        check(kind, region, value)
        spans.append({"type": kind, "start": length, "end": length + len(value), "value": value})
        text.append(value); length += len(value)
        pos = m.end()
    text.append(marked[pos:])
    full = "".join(text)
    assert "{{" not in full, full
    for s in spans:
        assert full[s["start"]:s["end"]] == s["value"]
    out.append({"id": f"{lang}-{number:03d}", "lang": lang, "tags": tags, "text": full, "spans": spans})

with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in out)
print(len(out), "snippets;", sum(1 for r in out if not r["spans"]), "without PII;",
      Counter(s["type"] for r in out for s in r["spans"]), Counter(r["lang"] for r in out))
