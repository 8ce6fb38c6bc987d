"""A minimal OpenADR 2.0b VEN that is not openleadr: raw XML over ``requests``.

It stands for the foreign VENs a grid operator's VTN must serve: messages are written here from
the 2.0b schema (element order and namespaces of oadr_20b.xsd), each one validated against that XSD
before it is sent, never signed (2.0b *standard* security: the TLS client certificate is the
credential), and answers are read with XPath, not with openleadr's parser.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import openleadr
import requests
from lxml import etree

SCHEMA = etree.XMLSchema(
    etree.parse(os.path.join(os.path.dirname(openleadr.__file__), "schema", "oadr_20b.xsd"))
)
PARSER = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True)
NS = {
    "oadr": "http://openadr.org/oadr-2.0b/2012/07",
    "ei": "http://docs.oasis-open.org/ns/energyinterop/201110",
    "pyld": "http://docs.oasis-open.org/ns/energyinterop/201110/payloads",
    "cal": "urn:ietf:params:xml:ns:icalendar-2.0",
    "strm": "urn:ietf:params:xml:ns:icalendar-2.0:stream",
    "emix": "http://docs.oasis-open.org/ns/emix/2011/06",
}
OADR, EI, PYLD = NS["oadr"], NS["ei"], NS["pyld"]


def envelope(body: str) -> bytes:
    """An unsigned oadrPayload around one message element."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<oadr:oadrPayload xmlns:oadr="{OADR}" xmlns:ei="{EI}" xmlns:pyld="{PYLD}">'
        f'<oadr:oadrSignedObject oadr:Id="signedObject">{body}</oadr:oadrSignedObject>'
        "</oadr:oadrPayload>"
    ).encode()


def valid(document: bytes) -> bytes:
    """The document, after checking it against the 2.0b XSD (a test VEN must be conformant)."""
    tree = etree.fromstring(document, PARSER)
    SCHEMA.assertValid(tree)
    return document


def t(text: Any) -> str:
    return escape(str(text))


def query_registration(request_id: str) -> bytes:
    return envelope(
        '<oadr:oadrQueryRegistration ei:schemaVersion="2.0b">'
        f"<pyld:requestID>{t(request_id)}</pyld:requestID></oadr:oadrQueryRegistration>"
    )


def create_party_registration(request_id: str, ven_name: str, *, xml_signature: bool = False) -> bytes:
    return envelope(
        '<oadr:oadrCreatePartyRegistration ei:schemaVersion="2.0b">'
        f"<pyld:requestID>{t(request_id)}</pyld:requestID>"
        "<oadr:oadrProfileName>2.0b</oadr:oadrProfileName>"
        "<oadr:oadrTransportName>simpleHttp</oadr:oadrTransportName>"
        "<oadr:oadrTransportAddress></oadr:oadrTransportAddress>"
        "<oadr:oadrReportOnly>false</oadr:oadrReportOnly>"
        f"<oadr:oadrXmlSignature>{'true' if xml_signature else 'false'}</oadr:oadrXmlSignature>"
        f"<oadr:oadrVenName>{t(ven_name)}</oadr:oadrVenName>"
        "<oadr:oadrHttpPullModel>true</oadr:oadrHttpPullModel>"
        "</oadr:oadrCreatePartyRegistration>"
    )


def poll(ven_id: str) -> bytes:
    return envelope(
        f'<oadr:oadrPoll ei:schemaVersion="2.0b"><ei:venID>{t(ven_id)}</ei:venID></oadr:oadrPoll>'
    )


def request_event(request_id: str, ven_id: str) -> bytes:
    return envelope(
        '<oadr:oadrRequestEvent ei:schemaVersion="2.0b"><pyld:eiRequestEvent>'
        f"<pyld:requestID>{t(request_id)}</pyld:requestID><ei:venID>{t(ven_id)}</ei:venID>"
        "</pyld:eiRequestEvent></oadr:oadrRequestEvent>"
    )


def created_event(ven_id: str, answers: list[tuple[str, int, str]], request_id: str = "") -> bytes:
    """answers: (event_id, modification_number, optIn|optOut)."""
    responses = "".join(
        "<ei:eventResponse><ei:responseCode>200</ei:responseCode>"
        f"<pyld:requestID>{t(request_id)}</pyld:requestID>"
        f"<ei:qualifiedEventID><ei:eventID>{t(event_id)}</ei:eventID>"
        f"<ei:modificationNumber>{int(number)}</ei:modificationNumber></ei:qualifiedEventID>"
        f"<ei:optType>{t(opt)}</ei:optType></ei:eventResponse>"
        for event_id, number, opt in answers
    )
    return envelope(
        '<oadr:oadrCreatedEvent ei:schemaVersion="2.0b"><pyld:eiCreatedEvent>'
        "<ei:eiResponse><ei:responseCode>200</ei:responseCode><ei:responseDescription>OK</ei:responseDescription>"
        "<pyld:requestID></pyld:requestID></ei:eiResponse>"
        f"<ei:eventResponses>{responses}</ei:eventResponses>"
        f"<ei:venID>{t(ven_id)}</ei:venID></pyld:eiCreatedEvent></oadr:oadrCreatedEvent>"
    )


def cancel_party_registration(request_id: str, registration_id: str, ven_id: str) -> bytes:
    return envelope(
        '<oadr:oadrCancelPartyRegistration ei:schemaVersion="2.0b">'
        f"<pyld:requestID>{t(request_id)}</pyld:requestID>"
        f"<ei:registrationID>{t(registration_id)}</ei:registrationID><ei:venID>{t(ven_id)}</ei:venID>"
        "</oadr:oadrCancelPartyRegistration>"
    )


@dataclass
class Answer:
    """What the VTN answered: HTTP status, the message type and the 2.0b response code."""

    status: int
    text: str
    tree: Any = None
    message_type: str | None = None
    code: str | None = None
    description: str | None = None

    @classmethod
    def of(cls, response: requests.Response) -> Answer:
        answer = cls(response.status_code, response.text)
        if response.content.strip():
            answer.tree = etree.fromstring(response.content, PARSER)
            signed = answer.tree.find(f"{{{OADR}}}oadrSignedObject")
            message = signed[0] if signed is not None and len(signed) else None
            if message is not None:
                answer.message_type = etree.QName(message).localname
            answer.code = answer.first(".//ei:eiResponse/ei:responseCode")
            answer.description = answer.first(".//ei:eiResponse/ei:responseDescription")
        return answer

    def first(self, xpath: str) -> str | None:
        found = self.tree.xpath(xpath, namespaces=NS) if self.tree is not None else []
        return found[0].text if found else None

    def all(self, xpath: str) -> list[Any]:
        return self.tree.xpath(xpath, namespaces=NS) if self.tree is not None else []


@dataclass
class RawVen:
    """One VEN: base URL of the VTN, the TLS client certificate, what it learnt."""

    base_url: str
    ven_name: str
    cert: tuple[str, str] | None = None
    ca: str | bool = True
    ven_id: str | None = None
    registration_id: str | None = None
    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    def send(self, service: str, document: bytes, *, check_schema: bool = True, **headers: str) -> Answer:
        if check_schema:
            valid(document)
        response = requests.post(
            f"{self.base_url}/{service}",
            data=document,
            headers={"Content-Type": "application/xml", **headers},
            cert=self.cert,
            verify=self.ca,
            timeout=30,
        )
        return Answer.of(response)

    def register(self) -> Answer:
        query = self.send("EiRegisterParty", query_registration(uuid.uuid4().hex))
        assert query.message_type == "oadrCreatedPartyRegistration", query.text
        answer = self.send("EiRegisterParty", create_party_registration(uuid.uuid4().hex, self.ven_name))
        if answer.code == "200":
            self.ven_id = answer.first(".//ei:venID")
            self.registration_id = answer.first(".//ei:registrationID")
        return answer

    def take(self, answer: Answer) -> list[dict[str, Any]]:
        """Remember the events of an oadrDistributeEvent; returns them."""
        found = []
        for node in answer.all(".//ei:eiEvent"):
            descriptor = node.find(f"{{{EI}}}eventDescriptor")
            event = {
                "event_id": descriptor.findtext(f"{{{EI}}}eventID"),
                "modification_number": int(descriptor.findtext(f"{{{EI}}}modificationNumber")),
                "status": descriptor.findtext(f"{{{EI}}}eventStatus"),
                "signal_name": node.xpath(".//ei:signalName", namespaces=NS)[0].text,
                "values": [float(v.text) for v in node.xpath(".//ei:signalPayload//ei:value", namespaces=NS)],
                "resource_ids": [r.text for r in node.xpath(".//ei:eiTarget/ei:resourceID", namespaces=NS)],
            }
            self.events[event["event_id"]] = event
            found.append(event)
        return found

    def poll(self) -> Answer:
        return self.send("OadrPoll", poll(self.ven_id))

    def request_events(self) -> Answer:
        answer = self.send("EiEvent", request_event(uuid.uuid4().hex, self.ven_id))
        self.take(answer)
        return answer

    def opt(self, answers: list[tuple[str, int, str]]) -> Answer:
        return self.send("EiEvent", created_event(self.ven_id, answers))
