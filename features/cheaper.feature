Feature: The same answers for less money
  Many users ask the same things, and some requests can wait a day for half the
  price. Product teams get the same answers; operators pay for fewer calls.

  Scenario: A repeated question is answered from the cache, at no cost
    Given the chat worker is running with a response cache shared by all users
    When ada@example.com asks "What is the capital of France?" at temperature 0 as request "c-1"
    And bob@example.com asks "What is the capital of France?" at temperature 0 as request "c-2" after the first answer
    Then request "c-2" is answered from the cache with the answer to "c-1", at no cost
    And the model was called once

  Scenario: A request that can wait is answered through the Batch API at half the price
    Given the chat worker is running with the Batch API
    When ada@example.com asks "Summarise my week" in a batch as request "w-1"
    Then request "w-1" is answered with "echo: Summarise my week | seen: 1 messages"
    And the answer to "w-1" came from a batch and costs half its tokens at gpt-4o-mini's price
    And the audit of ada@example.com lists, in order, the events
      | event               | detail                          |
      | Started             | ada@example.com                 |
      | UserMessageReceived | request w-1                     |
      | BatchSubmitted      | request w-1: sent in batch      |
      | ReplyRecorded       | request w-1 (Batch API)         |
