Feature: Chat requests are answered on Kafka
  Product teams publish chat requests on gpt-send and read the answers on
  gpt-response, matched by the record key. The service remembers each
  conversation, keeps to the daily token budget, and keeps every turn as an
  audit trail that auditors can replay.

  Background:
    Given the chat worker is running

  Scenario: A question is answered
    When ada@example.com asks "What is the capital of France?" as request "q-1"
    Then request "q-1" is answered with "echo: What is the capital of France? | seen: 1 messages"
    And the answer to "q-1" names the model "gpt-4o-mini" and its token usage
    And the answer to "q-1" costs its tokens at gpt-4o-mini's price

  Scenario: A follow-up sees its history
    When ada@example.com asks "My name is Ada." as request "q-1"
    And ada@example.com asks "What is my name?" as request "q-2" after the first answer
    Then the model was sent, for "q-2", the earlier question and answer before the new one
    And request "q-2" is answered with "echo: What is my name? | seen: 3 messages"

  Scenario: An image is described by the vision model
    When ada@example.com sends a PNG image asking "What is in this picture?" as request "img-1"
    Then request "img-1" is answered with "echo: What is in this picture? | seen: 1 messages | images: 1"
    And the model was asked for "img-1" with the vision model "gpt-4o"

  Scenario: A bad record gets an error response and a dead-letter copy
    When a producer sends the record "this is not json" with key "bad-1"
    Then request "bad-1" gets an "invalid_request" error saying "not valid JSON"
    And the original bytes of "bad-1" are on the dead-letter topic, sealed, with the reason
    And the model was not called

  Scenario: A redelivered record is not paid twice
    When ada@example.com asks "Tell me a joke" as request "joke-1"
    And the record of "joke-1" is delivered again
    Then both responses to "joke-1" are identical
    And the model was called once

  Scenario: An audit replays a conversation
    When ada@example.com asks "First question" as request "a-1"
    And ada@example.com asks "Second question" as request "a-2" after the first answer
    Then the audit of ada@example.com lists, in order, the events
      | event               | detail                   |
      | Started             | ada@example.com          |
      | UserMessageReceived | request a-1              |
      | ReplyRecorded       | request a-1              |
      | UserMessageReceived | request a-2              |
      | ReplyRecorded       | request a-2              |
    And the audit as of event 3 shows 1 answered turn
