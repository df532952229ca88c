"""Writes the generated corpora: snippets whose personal data comes from Faker, kept
apart from the hand-written tuning corpus (tests/data/pii_corpus.jsonl).

    python tests/data/pii_corpus_generated.make.py            # both files
    python tests/data/pii_corpus_generated.make.py --check    # rewrite nothing, compare

- tests/data/pii_corpus_generated.jsonl: seeds 1, 2, 3;
- tests/data/pii_corpus_heldout.jsonl: seeds 11, 12, 13, a held-out set (looked at only
  as figures) that tells whether rules tuned on the first set generalise to other
  values;
- tests/data/pii_corpus_heldout_wording.jsonl: seeds 21, 22, 23 with other sentences
  (T2, written after the detector was changed, some without any word that names the
  data): whether the rules generalise to other wording.

Ten locales (en_US, en_GB, de_DE, fr_FR, es_ES, it_IT, nl_NL, pl_PL, pt_BR, sv_SE). The
values are Faker's, written as Faker writes them (phone numbers with their
extensions, IBANs and cards bare or grouped); the sentences around them are short
templates in each locale's language, written before the detector was changed. Every
value is checked by a validator and dropped when invalid (a phone number that
libphonenumber does not call valid for the locale's region, a card failing Luhn or
shorter than 13 digits, an IBAN with wrong check digits, a national id failing its
check digits). Faker's UK National Insurance numbers all use the prefix ZZ, which HMRC
never issues: the prefix is redrawn (by the same Faker instance) from the letters
allowed, and the suffix from A-D. Faker has no German Steuer-ID: Faker digits are drawn
until python-stdnum accepts them.

Look-alike snippets carry no personal data: dotted versions, firmware and build
numbers, order numbers, gift-card numbers, ISBNs, EANs, ABA routing numbers, dates,
amounts, tracking numbers, postal addresses. They are tagged "lookalike".

Deterministic: each (seed, locale) has its own seeded Faker instance; the output
depends on the Faker version only (the file is what the tests read).
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import re
import sys
from pathlib import Path

import phonenumbers
import faker.providers.date_time as faker_dates
from faker import Faker
from stdnum import iban as s_iban
from stdnum import luhn
from stdnum.br import cpf
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.se import personnummer
from stdnum.us import ssn as us_ssn

HERE = Path(__file__).resolve().parent


class _Fixed(type):
    """Stands in for `datetime` and `date` in Faker's date provider: the same
    classes (constructors, isinstance, every other attribute), but `now()` and
    `today()` say 2026-01-01. Faker draws dates (dates of birth inside national
    ids, look-alike dates) relative to now: a fixed now keeps the files the same
    on any day."""

    def __new__(mcs, real: type, fixed: object) -> type:
        return super().__new__(mcs, real.__name__, (), {"_real": real, "_fixed": fixed})

    def __init__(cls, real: type, fixed: object) -> None:
        super().__init__(real.__name__, (), {})

    def __call__(cls, *args, **kwargs):
        return cls._real(*args, **kwargs)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls._real)

    def __getattr__(cls, name: str):
        if name in ("now", "today"):
            fixed = cls._fixed
            return lambda tz=None: fixed.astimezone(tz) if tz is not None else fixed
        return getattr(cls._real, name)


faker_dates.datetime = _Fixed(datetime.datetime, datetime.datetime(2026, 1, 1, 12))  # type: ignore[misc]
faker_dates.dtdate = _Fixed(datetime.date, datetime.date(2026, 1, 1))  # type: ignore[misc]

# file: (seeds, sentences)
SETS = {
    "pii_corpus_generated.jsonl": ((1, 2, 3), "T"),
    "pii_corpus_heldout.jsonl": ((11, 12, 13), "T"),
    "pii_corpus_heldout_wording.jsonl": ((21, 22, 23), "T2"),
}
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "pt_BR",
           "sv_SE")

# ---- sentences, per language ---------------------------------------------------------
# {P} a phone number, {E} an e-mail, {C} a card, {I} an IBAN, {N} a national id, {A} an
# IP address; {P2}, {C2}, {I2}: a second one. {V}: the look-alike value.
T: dict[str, dict[str, list[str]]] = {
    "en": {
        "phone": ["Call me at {P}.", "My phone number is {P}, text me anytime.",
                  "Is {P} a valid phone number format?", "You can reach me on {P} after 6pm.",
                  "{P} is my mobile, the landline is dead.", "Please update my number to {P}",
                  "Tel: {P}", "Can you ring {P} and ask for Sam?"],
        "email": ["My email is {E}.", "Send the report to {E} please.",
                  "Can you draft a reply to {E} about the delay?"],
        "card": ["My card number is {C}, expiry 09/28.", "Charge {C} for the deposit.",
                 "Why was {C} declined?"],
        "iban": ["Please wire it to {I}.", "My IBAN is {I}, thanks.",
                 "Is {I} the right account for the rent?"],
        "id": ["My {name} is {N}.", "Fill in {N} on the form.", "{N} is my {name}, is it valid?",
               "Can you check {N} for me?"],
        "ip": ["The server at {A} is down.", "Why does {A} keep timing out?"],
        "pair": ["Wire half to {I} and half to {I2}.", "{I} Can you check if {I2} is right?",
                 "Cards {C} and {C2} were both charged.", "Call {P} or {P2}."],
    },
    "de": {
        "phone": ["Ruf mich an unter {P}.", "Meine Telefonnummer ist {P}.",
                  "Ist {P} eine gültige Nummer?", "Du erreichst mich unter {P}.",
                  "{P} ist meine Handynummer.", "Bitte ändere meine Nummer auf {P}",
                  "Tel.: {P}", "Kannst du {P} anrufen?"],
        "email": ["Meine E-Mail ist {E}.", "Schick den Bericht bitte an {E}.",
                  "Schreib eine Antwort an {E} wegen der Verspätung."],
        "card": ["Meine Kartennummer ist {C}, gültig bis 09/28.", "Belaste bitte {C}.",
                 "Warum wurde {C} abgelehnt?"],
        "iban": ["Bitte überweise an {I}.", "Meine IBAN lautet {I}.",
                 "Ist {I} das richtige Konto für die Miete?"],
        "id": ["Meine {name} ist {N}.", "Trag {N} in das Formular ein.",
               "{N} ist meine {name}, stimmt die?", "Kannst du {N} prüfen?"],
        "ip": ["Der Server unter {A} antwortet nicht.", "Warum ist {A} so langsam?"],
        "pair": ["Überweise die Hälfte an {I} und den Rest an {I2}.",
                 "{I} Kannst du prüfen, ob {I2} stimmt?",
                 "Die Karten {C} und {C2} wurden belastet.", "Ruf {P} oder {P2} an."],
    },
    "fr": {
        "phone": ["Appelle-moi au {P}.", "Mon numéro, c'est le {P}",
                  "Est-ce que {P} est un numéro valide ?", "Tu peux me joindre au {P}.",
                  "{P} c'est mon portable.", "Merci de changer mon numéro pour {P}",
                  "Tél : {P}", "Peux-tu appeler le {P} ?"],
        "email": ["Mon e-mail est {E}.", "Envoie le rapport à {E} stp.",
                  "Rédige une réponse à {E} au sujet du retard."],
        "card": ["Mon numéro de carte est {C}, expiration 09/28.", "Débite {C} pour l'acompte.",
                 "Pourquoi {C} a-t-elle été refusée ?"],
        "iban": ["Merci de virer sur {I}.", "Mon IBAN est {I}.",
                 "Est-ce que {I} est le bon compte pour le loyer ?"],
        "id": ["Mon {name} est {N}.", "Indique {N} sur le formulaire.",
               "{N} c'est mon {name}, il est valide ?", "Tu peux vérifier {N} ?"],
        "ip": ["Le serveur {A} ne répond plus.", "Pourquoi {A} est-il si lent ?"],
        "pair": ["Vire la moitié sur {I} et le reste sur {I2}.",
                 "{I} Tu peux vérifier si {I2} est correct ?",
                 "Les cartes {C} et {C2} ont été débitées.", "Appelle le {P} ou le {P2}."],
    },
    "es": {
        "phone": ["Llámame al {P}.", "Mi número de teléfono es {P}.",
                  "¿{P} es un número válido?", "Puedes localizarme en el {P}.",
                  "{P} es mi móvil.", "Cambia mi número a {P}, por favor",
                  "Tel.: {P}", "¿Puedes llamar al {P}?"],
        "email": ["Mi correo es {E}.", "Envía el informe a {E}, por favor.",
                  "Escribe una respuesta a {E} sobre el retraso."],
        "card": ["Mi número de tarjeta es {C}, caduca 09/28.", "Cárgalo a {C}.",
                 "¿Por qué rechazaron {C}?"],
        "iban": ["Transfiere a {I}, por favor.", "Mi IBAN es {I}.",
                 "¿{I} es la cuenta correcta para el alquiler?"],
        "id": ["Mi {name} es {N}.", "Pon {N} en el formulario.",
               "{N} es mi {name}, ¿es válido?", "¿Puedes comprobar {N}?"],
        "ip": ["El servidor {A} no responde.", "¿Por qué {A} va tan lento?"],
        "pair": ["Transfiere la mitad a {I} y el resto a {I2}.",
                 "{I} ¿Puedes comprobar si {I2} es correcto?",
                 "Cargaron las tarjetas {C} y {C2}.", "Llama al {P} o al {P2}."],
    },
    "it": {
        "phone": ["Chiamami al {P}.", "Il mio numero di telefono è {P}.",
                  "{P} è un numero valido?", "Sono raggiungibile al {P}",
                  "{P} è il mio cellulare.", "Aggiorna il mio numero a {P}",
                  "Tel. {P}", "Puoi chiamare il {P}?"],
        "email": ["La mia e-mail è {E}.", "Manda il resoconto a {E}, grazie.",
                  "Scrivi una risposta a {E} sul ritardo."],
        "card": ["Il numero della mia carta è {C}, scadenza 09/28.", "Addebita su {C}.",
                 "Perché {C} è stata rifiutata?"],
        "iban": ["Fai il bonifico su {I}.", "Il mio IBAN è {I}.",
                 "{I} è il conto giusto per l'affitto?"],
        "id": ["Il mio {name} è {N}.", "Inserisci {N} nel modulo.",
               "{N} è il mio {name}, è valido?", "Puoi controllare {N}?"],
        "ip": ["Il server {A} non risponde.", "Perché {A} è così lento?"],
        "pair": ["Metà su {I} e il resto su {I2}.", "{I} Puoi controllare se {I2} è giusto?",
                 "Hanno addebitato le carte {C} e {C2}.", "Chiama il {P} o il {P2}."],
    },
    "nl": {
        "phone": ["Bel me op {P}.", "Mijn telefoonnummer is {P}.",
                  "Is {P} een geldig nummer?", "Je kunt me bereiken op {P}.",
                  "{P} is mijn mobiel.", "Wijzig mijn nummer naar {P}",
                  "Tel: {P}", "Kun je {P} bellen?"],
        "email": ["Mijn e-mail is {E}.", "Stuur het verslag naar {E} aub.",
                  "Schrijf een antwoord aan {E} over de vertraging."],
        "card": ["Mijn kaartnummer is {C}, geldig tot 09/28.", "Schrijf het af van {C}.",
                 "Waarom werd {C} geweigerd?"],
        "iban": ["Maak het over naar {I}.", "Mijn IBAN is {I}.",
                 "Is {I} de juiste rekening voor de huur?"],
        "id": ["Mijn {name} is {N}.", "Vul {N} in op het formulier.",
               "{N} is mijn {name}, klopt dat?", "Kun je {N} controleren?"],
        "ip": ["De server op {A} reageert niet.", "Waarom is {A} zo traag?"],
        "pair": ["De helft naar {I} en de rest naar {I2}.",
                 "{I} Kun je checken of {I2} een geldige IBAN is?",
                 "De kaarten {C} en {C2} zijn belast.", "Bel {P} of {P2}."],
    },
    "pl": {
        "phone": ["Zadzwoń do mnie pod {P}.", "Mój numer telefonu to {P}.",
                  "Czy {P} to poprawny numer?", "Można się ze mną skontaktować pod {P}.",
                  "{P} to moja komórka.", "Zmień mój numer na {P}",
                  "Tel.: {P}", "Możesz zadzwonić pod {P}?"],
        "email": ["Mój e-mail to {E}.", "Wyślij raport na {E}.",
                  "Napisz odpowiedź do {E} w sprawie opóźnienia."],
        "card": ["Numer mojej karty to {C}, ważna do 09/28.", "Obciąż kartę {C}.",
                 "Dlaczego {C} została odrzucona?"],
        "iban": ["Przelej na {I}.", "Mój IBAN to {I}.", "Czy {I} to dobre konto na czynsz?"],
        "id": ["Mój {name} to {N}.", "Wpisz {N} w formularzu.",
               "{N} to mój {name}, czy jest poprawny?", "Możesz sprawdzić {N}?"],
        "ip": ["Serwer {A} nie odpowiada.", "Dlaczego {A} działa tak wolno?"],
        "pair": ["Połowę na {I}, resztę na {I2}.", "{I} Czy możesz sprawdzić {I2}?",
                 "Obciążono karty {C} i {C2}.", "Zadzwoń pod {P} albo {P2}."],
    },
    "pt": {
        "phone": ["Me liga no {P}.", "Meu número de telefone é {P}.",
                  "{P} é um número válido?", "Você pode me encontrar no {P}.",
                  "{P} é o meu celular.", "Atualize meu número para {P}",
                  "Tel.: {P}", "Pode ligar para {P}?"],
        "email": ["Meu e-mail é {E}.", "Mande o relatório para {E}, por favor.",
                  "Escreva uma resposta para {E} sobre o atraso."],
        "card": ["O número do meu cartão é {C}, validade 09/28.", "Cobre no {C}.",
                 "Por que {C} foi recusado?"],
        "iban": ["Transfira para {I}.", "Meu IBAN é {I}.",
                 "{I} é a conta certa para o aluguel?"],
        "id": ["Meu {name} é {N}.", "Coloque {N} no formulário.",
               "{N} é o meu {name}, está certo?", "Pode verificar {N}?"],
        "ip": ["O servidor {A} não responde.", "Por que {A} está tão lento?"],
        "pair": ["Metade para {I} e o resto para {I2}.", "{I} Pode verificar se {I2} está certo?",
                 "Cobraram os cartões {C} e {C2}.", "Ligue para {P} ou {P2}."],
    },
    "sv": {
        "phone": ["Ring mig på {P}.", "Mitt telefonnummer är {P}.",
                  "Är {P} ett giltigt nummer?", "Du når mig på {P}.",
                  "{P} är min mobil.", "Ändra mitt nummer till {P}",
                  "Tel: {P}", "Kan du ringa {P}?"],
        "email": ["Min e-post är {E}.", "Skicka rapporten till {E}.",
                  "Skriv ett svar till {E} om förseningen."],
        "card": ["Mitt kortnummer är {C}, giltigt till 09/28.", "Dra det från {C}.",
                 "Varför nekades {C}?"],
        "iban": ["För över till {I}.", "Mitt IBAN är {I}.",
                 "Är {I} rätt konto för hyran?"],
        "id": ["Mitt {name} är {N}.", "Fyll i {N} i formuläret.",
               "{N} är mitt {name}, stämmer det?", "Kan du kolla {N}?"],
        "ip": ["Servern {A} svarar inte.", "Varför är {A} så långsam?"],
        "pair": ["Hälften till {I} och resten till {I2}.", "{I} Kan du kolla om {I2} stämmer?",
                 "Korten {C} och {C2} drogs.", "Ring {P} eller {P2}."],
    },
}

# A second set of sentences, written after the detector was changed and never used to
# change it: the held-out set "wording" tells whether the rules hold for other
# sentences than those of T (some without any word that names the data).
T2: dict[str, dict[str, list[str]]] = {
    "en": {
        "phone": ["Here's the number for the plumber: {P}", "{P} - that's the front desk.",
                  "Could you format {P} nicely for my business card?",
                  "whatsapp me {P} when you land", "The number you need is {P}, ask for Jo."],
        "email": ["ping {E} if it breaks", "Reply-To: {E}"],
        "card": ["Please use the card ending in the number {C} for the booking.",
                 "visa {C} exp 11/29"],
        "iban": ["Refund goes to {I} (my savings).", "bank details: {I}"],
        "id": ["{name}: {N}", "my {name} {N}, don't share it", "For the form: {N}"],
        "ip": ["blocked by firewall: {A}"],
        "pair": ["old account {I}, new account {I2}", "home {P}, work {P2}"],
    },
    "de": {
        "phone": ["Hier die Nummer vom Klempner: {P}", "{P} - das ist die Rezeption.",
                  "Kannst du {P} schön für meine Visitenkarte formatieren?",
                  "schreib mir auf WhatsApp {P}", "Die Nummer lautet {P}, frag nach Jo."],
        "email": ["melde dich bei {E}, falls was klemmt", "Antwort an: {E}"],
        "card": ["Bitte nimm für die Buchung die Karte {C}.", "Visa {C} gültig 11/29"],
        "iban": ["Die Erstattung geht an {I} (Sparkonto).", "Bankverbindung: {I}"],
        "id": ["{name}: {N}", "meine {name} {N}, nicht weitergeben", "Fürs Formular: {N}"],
        "ip": ["von der Firewall geblockt: {A}"],
        "pair": ["altes Konto {I}, neues Konto {I2}", "privat {P}, Büro {P2}"],
    },
    "fr": {
        "phone": ["Voici le numéro du plombier : {P}", "{P} - c'est l'accueil.",
                  "Tu peux mettre en forme {P} pour ma carte de visite ?",
                  "écris-moi sur WhatsApp au {P}", "Le numéro à appeler : {P}, demande Jo."],
        "email": ["écris à {E} si ça coince", "Répondre à : {E}"],
        "card": ["Utilise la carte {C} pour la réservation.", "Visa {C} exp. 11/29"],
        "iban": ["Le remboursement va sur {I} (livret).", "coordonnées bancaires : {I}"],
        "id": ["{name} : {N}", "mon {name} {N}, ne le partage pas", "Pour le formulaire : {N}"],
        "ip": ["bloqué par le pare-feu : {A}"],
        "pair": ["ancien compte {I}, nouveau compte {I2}", "maison {P}, bureau {P2}"],
    },
    "es": {
        "phone": ["Este es el número del fontanero: {P}", "{P} - es la recepción.",
                  "¿Me das formato a {P} para mi tarjeta de visita?",
                  "escríbeme por WhatsApp al {P}", "El número es {P}, pregunta por Jo."],
        "email": ["escribe a {E} si falla", "Responder a: {E}"],
        "card": ["Usa la tarjeta {C} para la reserva.", "visa {C} cad. 11/29"],
        "iban": ["El reembolso va a {I} (ahorros).", "datos bancarios: {I}"],
        "id": ["{name}: {N}", "mi {name} {N}, no lo compartas", "Para el formulario: {N}"],
        "ip": ["bloqueada por el cortafuegos: {A}"],
        "pair": ["cuenta antigua {I}, cuenta nueva {I2}", "casa {P}, trabajo {P2}"],
    },
    "it": {
        "phone": ["Ecco il numero dell'idraulico: {P}", "{P} - è la reception.",
                  "Puoi formattare {P} per il mio biglietto da visita?",
                  "scrivimi su WhatsApp al {P}", "Il numero è {P}, chiedi di Jo."],
        "email": ["scrivi a {E} se si blocca", "Rispondi a: {E}"],
        "card": ["Usa la carta {C} per la prenotazione.", "visa {C} scad. 11/29"],
        "iban": ["Il rimborso va su {I} (risparmi).", "coordinate bancarie: {I}"],
        "id": ["{name}: {N}", "il mio {name} {N}, non condividerlo", "Per il modulo: {N}"],
        "ip": ["bloccato dal firewall: {A}"],
        "pair": ["vecchio conto {I}, nuovo conto {I2}", "casa {P}, ufficio {P2}"],
    },
    "nl": {
        "phone": ["Hier is het nummer van de loodgieter: {P}", "{P} - dat is de receptie.",
                  "Kun je {P} netjes opmaken voor mijn visitekaartje?",
                  "app me op {P} als je geland bent", "Het nummer is {P}, vraag naar Jo."],
        "email": ["mail {E} als het stukgaat", "Antwoord aan: {E}"],
        "card": ["Gebruik de kaart {C} voor de boeking.", "visa {C} geldig 11/29"],
        "iban": ["De terugbetaling gaat naar {I} (spaarrekening).", "bankgegevens: {I}"],
        "id": ["{name}: {N}", "mijn {name} {N}, niet delen", "Voor het formulier: {N}"],
        "ip": ["geblokkeerd door de firewall: {A}"],
        "pair": ["oude rekening {I}, nieuwe rekening {I2}", "thuis {P}, werk {P2}"],
    },
    "pl": {
        "phone": ["Oto numer do hydraulika: {P}", "{P} - to recepcja.",
                  "Możesz ładnie sformatować {P} na wizytówkę?",
                  "napisz na WhatsAppie {P}", "Numer to {P}, zapytaj o Jo."],
        "email": ["pisz na {E}, jak coś nie działa", "Odpowiedz do: {E}"],
        "card": ["Użyj karty {C} do rezerwacji.", "visa {C} ważna 11/29"],
        "iban": ["Zwrot idzie na {I} (oszczędności).", "dane do przelewu: {I}"],
        "id": ["{name}: {N}", "mój {name} {N}, nie udostępniaj", "Do formularza: {N}"],
        "ip": ["zablokowany przez firewall: {A}"],
        "pair": ["stare konto {I}, nowe konto {I2}", "dom {P}, praca {P2}"],
    },
    "pt": {
        "phone": ["Aqui está o número do encanador: {P}", "{P} - é a recepção.",
                  "Pode formatar {P} para o meu cartão de visita?",
                  "me chama no WhatsApp {P}", "O número é {P}, pergunte pelo Jo."],
        "email": ["escreve para {E} se der problema", "Responder para: {E}"],
        "card": ["Use o cartão {C} para a reserva.", "visa {C} val. 11/29"],
        "iban": ["O reembolso vai para {I} (poupança).", "dados bancários: {I}"],
        "id": ["{name}: {N}", "meu {name} {N}, não compartilhe", "Para o formulário: {N}"],
        "ip": ["bloqueado pelo firewall: {A}"],
        "pair": ["conta antiga {I}, conta nova {I2}", "casa {P}, trabalho {P2}"],
    },
    "sv": {
        "phone": ["Här är numret till rörmokaren: {P}", "{P} - det är receptionen.",
                  "Kan du formatera {P} snyggt för mitt visitkort?",
                  "skriv på WhatsApp till {P}", "Numret är {P}, fråga efter Jo."],
        "email": ["mejla {E} om det krånglar", "Svara till: {E}"],
        "card": ["Använd kortet {C} för bokningen.", "visa {C} giltigt 11/29"],
        "iban": ["Återbetalningen går till {I} (sparkonto).", "bankuppgifter: {I}"],
        "id": ["{name}: {N}", "mitt {name} {N}, dela det inte", "Till formuläret: {N}"],
        "ip": ["blockerad av brandväggen: {A}"],
        "pair": ["gammalt konto {I}, nytt konto {I2}", "hem {P}, jobb {P2}"],
    },
}

# Look-alikes: (kind, sentence per language).
L: dict[str, dict[str, str]] = {
    "version": {
        "en": "After updating to version {V} the app crashes.",
        "de": "Nach dem Update auf Version {V} stürzt die App ab.",
        "fr": "Depuis la version {V}, l'appli plante.", "es": "Desde la versión {V} la app falla.",
        "it": "Dalla versione {V} l'app si blocca.", "nl": "Sinds versie {V} crasht de app.",
        "pl": "Od wersji {V} aplikacja się zawiesza.", "pt": "Desde a versão {V} o app trava.",
        "sv": "Sedan version {V} kraschar appen."},
    "firmware": {
        "en": "The router runs firmware {V}, is that the latest?",
        "de": "Der Router hat Firmware {V}, ist das aktuell?",
        "fr": "Le routeur a le firmware {V}, c'est le dernier ?",
        "es": "El router tiene el firmware {V}, ¿es el último?",
        "it": "Il router ha il firmware {V}, è l'ultimo?",
        "nl": "De router draait firmware {V}, is dat de nieuwste?",
        "pl": "Router ma firmware {V}, czy to najnowszy?",
        "pt": "O roteador está com o firmware {V}, é o mais novo?",
        "sv": "Routern kör firmware {V}, är det den senaste?"},
    "build": {
        "en": "Windows build {V} breaks the driver.", "de": "Windows Build {V} macht den Treiber kaputt.",
        "fr": "Le build {V} de Windows casse le pilote.", "es": "La build {V} de Windows rompe el driver.",
        "it": "La build {V} di Windows rompe il driver.", "nl": "Windows build {V} breekt de driver.",
        "pl": "Build {V} Windowsa psuje sterownik.", "pt": "O build {V} do Windows quebra o driver.",
        "sv": "Windows build {V} förstör drivrutinen."},
    "order": {
        "en": "My order {V} never arrived.", "de": "Meine Bestellung {V} ist nie angekommen.",
        "fr": "Ma commande {V} n'est jamais arrivée.", "es": "Mi pedido {V} nunca llegó.",
        "it": "Il mio ordine {V} non è mai arrivato.", "nl": "Mijn bestelling {V} is nooit aangekomen.",
        "pl": "Moje zamówienie {V} nie dotarło.", "pt": "Meu pedido {V} nunca chegou.",
        "sv": "Min beställning {V} kom aldrig fram."},
    "giftcard": {
        "en": "The gift card {V} shows a zero balance.",
        "de": "Die Geschenkkarte {V} zeigt kein Guthaben.",
        "fr": "La carte cadeau {V} affiche un solde nul.",
        "es": "La tarjeta regalo {V} tiene saldo cero.",
        "it": "La carta regalo {V} ha saldo zero.", "nl": "De cadeaukaart {V} heeft geen saldo.",
        "pl": "Karta podarunkowa {V} ma zerowe saldo.", "pt": "O cartão-presente {V} está sem saldo.",
        "sv": "Presentkortet {V} har inget saldo."},
    "isbn": {
        "en": "The book is ISBN {V}.", "de": "Das Buch hat die ISBN {V}.",
        "fr": "Le livre a l'ISBN {V}.", "es": "El libro tiene el ISBN {V}.",
        "it": "Il libro ha ISBN {V}.", "nl": "Het boek heeft ISBN {V}.",
        "pl": "Książka ma ISBN {V}.", "pt": "O livro tem ISBN {V}.", "sv": "Boken har ISBN {V}."},
    "isbn_bare": {
        "en": "Can you summarise {V} for me?", "de": "Kannst du {V} zusammenfassen?",
        "fr": "Tu peux résumer {V} ?", "es": "¿Puedes resumir {V}?", "it": "Puoi riassumere {V}?",
        "nl": "Kun je {V} samenvatten?", "pl": "Możesz streścić {V}?",
        "pt": "Pode resumir {V}?", "sv": "Kan du sammanfatta {V}?"},
    "ean": {
        "en": "Barcode {V} is not in the catalogue.", "de": "Der Barcode {V} fehlt im Katalog.",
        "fr": "Le code-barres {V} n'est pas au catalogue.",
        "es": "El código de barras {V} no está en el catálogo.",
        "it": "Il codice a barre {V} non è a catalogo.", "nl": "Barcode {V} staat niet in de catalogus.",
        "pl": "Kodu kreskowego {V} nie ma w katalogu.",
        "pt": "O código de barras {V} não está no catálogo.",
        "sv": "Streckkoden {V} finns inte i katalogen."},
    "routing": {
        "en": "Is {V} the routing number of Chase?", "de": "Ist {V} die ABA-Nummer der Bank?",
        "fr": "Est-ce que {V} est le code ABA de la banque ?",
        "es": "¿{V} es el número ABA del banco?", "it": "{V} è il codice ABA della banca?",
        "nl": "Is {V} het ABA-nummer van de bank?", "pl": "Czy {V} to numer ABA banku?",
        "pt": "{V} é o número ABA do banco?", "sv": "Är {V} bankens ABA-nummer?"},
    "date": {
        "en": "The meeting moved to {V}.", "de": "Der Termin ist jetzt am {V}.",
        "fr": "La réunion est déplacée au {V}.", "es": "La reunión pasa al {V}.",
        "it": "La riunione è spostata al {V}.", "nl": "De vergadering is verplaatst naar {V}.",
        "pl": "Spotkanie przeniesiono na {V}.", "pt": "A reunião mudou para {V}.",
        "sv": "Mötet flyttades till {V}."},
    "amount": {
        "en": "The invoice total is {V}.", "de": "Die Rechnung beträgt {V}.",
        "fr": "La facture s'élève à {V}.", "es": "La factura es de {V}.",
        "it": "La fattura è di {V}.", "nl": "De factuur bedraagt {V}.",
        "pl": "Faktura wynosi {V}.", "pt": "A fatura é de {V}.", "sv": "Fakturan är på {V}."},
    "tracking": {
        "en": "Tracking number {V} has not moved for days.",
        "de": "Die Sendungsnummer {V} bewegt sich seit Tagen nicht.",
        "fr": "Le numéro de suivi {V} ne bouge plus.",
        "es": "El número de seguimiento {V} no avanza.",
        "it": "Il numero di tracking {V} è fermo da giorni.",
        "nl": "Track-and-trace {V} staat al dagen stil.",
        "pl": "Numer przesyłki {V} stoi od kilku dni.",
        "pt": "O código de rastreio {V} está parado.",
        "sv": "Kollinumret {V} har stått still i flera dagar."},
    "address": {
        "en": "Ship it to the office: {V}.", "de": "Schick es ins Büro: {V}.",
        "fr": "Envoie-le au bureau : {V}.", "es": "Envíalo a la oficina: {V}.",
        "it": "Spediscilo in ufficio: {V}.", "nl": "Stuur het naar kantoor: {V}.",
        "pl": "Wyślij do biura: {V}.", "pt": "Envie para o escritório: {V}.",
        "sv": "Skicka det till kontoret: {V}."},
}

ID_NAMES = {"en_US": "SSN", "en_GB": "National Insurance number", "de_DE": "Steuer-ID",
            "fr_FR": "numéro de sécurité sociale", "es_ES": "DNI", "it_IT": "codice fiscale",
            "nl_NL": "BSN", "pl_PL": "PESEL", "pt_BR": "CPF", "sv_SE": "personnummer"}

# ---- values, from Faker, checked by validators ---------------------------------------

_NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
_NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"
_NINO_BAD_PREFIXES = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def nino_valid(value: str) -> bool:
    v = value.replace(" ", "").upper()
    return bool(re.fullmatch(r"[A-Z]{2}\d{6}[A-D]", v)) and v[0] in _NINO_FIRST and \
        v[1] in _NINO_SECOND and v[:2] not in _NINO_BAD_PREFIXES


def phone(fake: Faker, region: str) -> str | None:
    value = fake.phone_number()
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    return value if phonenumbers.is_valid_number(number) else None


def card(fake: Faker) -> str | None:
    value = fake.credit_card_number()
    if not (13 <= len(value) <= 19 and luhn.is_valid(value)):
        return None
    style = fake.random_element(("bare", "spaces", "spaces", "dashes"))
    if style == "bare":
        return value
    sep = " " if style == "spaces" else "-"
    if len(value) == 15 and value[:2] in ("34", "37"):  # Amex: 4-6-5
        return sep.join((value[:4], value[4:10], value[10:]))
    if len(value) == 14 and value[:2] in ("30", "36", "38"):  # Diners: 4-6-4
        return sep.join((value[:4], value[4:10], value[10:]))
    return sep.join(value[i:i + 4] for i in range(0, len(value), 4))


def iban(fake: Faker) -> str | None:
    value = fake.iban()
    if not s_iban.is_valid(value, check_country=False):
        return None
    if fake.boolean():
        return " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def national_id(fake: Faker, locale: str) -> str | None:
    if locale == "en_US":
        value = fake.ssn()
        return value if us_ssn.is_valid(value) else None
    if locale == "en_GB":
        value = fake.ssn()
        prefix = fake.random_element(_NINO_FIRST) + fake.random_element(_NINO_SECOND)
        value = prefix + value[2:-1] + fake.random_element("ABCD")
        return value if nino_valid(value) else None
    if locale == "de_DE":
        value = fake.numerify("%##########")
        return value if idnr.is_valid(value) else None
    if locale == "es_ES":
        value = fake.random_element((fake.nif, fake.nie))()
        return value if dni.is_valid(value) or nie.is_valid(value) else None
    if locale == "pl_PL":
        value = fake.pesel()
        return value if pesel.is_valid(value) else None
    if locale == "pt_BR":
        value = fake.cpf()
        return value if cpf.is_valid(value) else None
    value = fake.ssn()
    valid = {"fr_FR": nir.is_valid, "it_IT": codicefiscale.is_valid, "nl_NL": bsn.is_valid,
             "sv_SE": personnummer.is_valid}[locale]
    return value if valid(value) else None


def ip(fake: Faker) -> str:
    value = fake.ipv4_public() if fake.random_int(0, 3) else fake.ipv6()
    address = ipaddress.ip_address(value)
    return None if address.is_loopback or address.is_unspecified else value


def lookalike(fake: Faker, kind: str, locale: str) -> str:
    r = fake.random_int
    if kind == "version":
        return f"{r(1, 30)}.{r(0, 30)}.{r(0, 30)}.{r(0, 99)}"
    if kind == "firmware":
        return f"{r(1, 20)}.{r(0, 20)}.{r(0, 20)}.{r(0, 20)}"
    if kind == "build":
        return f"10.0.{r(10000, 26000)}.{r(1, 4000)}"
    if kind == "order":
        return fake.random_element((fake.numerify("###-#######-#######"),
                                    fake.numerify("#########"), fake.numerify("##########"),
                                    fake.bothify("??-#######", letters="ABCDEFGHKLMNPRSTUVWXYZ")))
    if kind == "giftcard":
        body = fake.numerify("6###############")[:15]
        value = body + luhn.calc_check_digit(body)
        return " ".join(value[i:i + 4] for i in range(0, 16, 4))
    if kind in ("isbn", "isbn_bare"):
        return fake.random_element((fake.isbn10, fake.isbn13))()
    if kind == "ean":
        return fake.random_element((fake.ean13, fake.ean8))()
    if kind == "routing":
        return fake.aba()
    if kind == "date":
        return fake.date(fake.random_element(("%d.%m.%Y", "%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y",
                                              "%d-%m-%Y")))
    if kind == "amount":
        return fake.pricetag()
    if kind == "tracking":
        return fake.random_element((
            fake.bothify("1Z###???##########", letters="ABCDEFGHJKLMNPRSTUVWXY"),
            fake.numerify("############"), fake.numerify("9400 #### #### #### #### ##"),
            fake.bothify("??#########??", letters="ABCDEFGHJKLMNPRSTUVWXYZ")))
    if kind == "address":
        return fake.address().replace("\n", ", ")
    raise ValueError(kind)


# ---- snippets -----------------------------------------------------------------------

def fill(template: str, values: dict[str, tuple[str, str]]) -> tuple[str, list[dict]]:
    """The template with its {X} filled, and the labelled spans."""
    text, spans, position = "", [], 0
    for match in re.finditer(r"\{(\w+)\}", template):
        text += template[position:match.start()]
        kind, value = values[match.group(1)]
        if kind:
            spans.append({"type": kind, "start": len(text), "end": len(text) + len(value),
                          "value": value})
        text += value
        position = match.end()
    return text + template[position:], spans


def draw(fake: Faker, make, *args):
    for _ in range(5000):
        value = make(fake, *args)
        if value:
            return value
    raise RuntimeError(f"no valid value from {make.__name__}")


def snippets(seed: int, locale_index: int, locale: str, sentences: str) -> list[dict]:
    fake = Faker(locale)
    fake.seed_instance(seed * 100 + locale_index)
    lang, region = locale[:2], locale[3:]
    t = (T2 if sentences == "T2" else T)[lang]
    rows: list[tuple[str, list[str], str, dict]] = []
    name = ID_NAMES[locale]

    def values() -> dict[str, tuple[str, str]]:
        return {
            "P": ("PHONE", draw(fake, phone, region)), "P2": ("PHONE", draw(fake, phone, region)),
            "E": ("EMAIL", fake.email()), "C": ("CARD", draw(fake, card)),
            "C2": ("CARD", draw(fake, card)), "I": ("IBAN", draw(fake, iban)),
            "I2": ("IBAN", draw(fake, iban)), "N": ("NATIONAL_ID", draw(fake, national_id, locale)),
            "A": ("IP", draw(fake, ip)), "name": ("", name),
        }

    counts = (("phone", 5), ("email", 2), ("card", 2), ("iban", 2), ("id", 2), ("ip", 1),
              ("pair", 1))
    for kind, count in counts:
        for template in fake.random_elements(t[kind], length=count, unique=True):
            rows.append((kind, [kind], template, values()))
    for kind in fake.random_elements(list(L), length=6, unique=True):
        rows.append(("lookalike", ["lookalike", kind], L[kind][lang],
                     {"V": ("", lookalike(fake, kind, locale))}))
    out = []
    for number, (_, tags, template, vals) in enumerate(rows, 1):
        text, spans = fill(template, vals)
        out.append({"id": f"g{seed}-{locale}-{number:02d}", "lang": locale,
                    "tags": ["generated", *tags], "text": text, "spans": spans})
    return out


def build(seeds: tuple[int, ...], sentences: str) -> list[dict]:
    return [row for seed in seeds for index, locale in enumerate(LOCALES)
            for row in snippets(seed, index, locale, sentences)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    stale = []
    for name, (seeds, sentences) in SETS.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n"
                       for row in build(seeds, sentences))
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{name}: {text.count(chr(10))} snippets")
    if stale:
        sys.exit(f"out of date: {', '.join(stale)}")


if __name__ == "__main__":
    main()
