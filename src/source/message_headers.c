/*
 * Whether a fetched message has headers, read without librdkafka parsing them.
 *
 * librdkafka keeps a fetched v2 record's header bytes unparsed (a pointer and a length into the
 * fetch buffer) until the application asks for the headers; rd_kafka_message_headers() then
 * allocates and zeroes a shadow buffer (a 512-byte rd_kafka_buf_t), reads the header count and
 * frees the buffer again, also when the count is 0. For records without headers that is
 * ~6% of streamscore's CPU per event, for nothing. The count is a zigzag varint, so a record
 * without headers has exactly the one byte 0x00 there; this answers "no headers" for that
 * case (and for a message that has no header bytes at all) and "ask librdkafka" for every
 * other, which rd_kafka_message_headers() then parses as always.
 *
 * rd_kafka_msg_t is librdkafka's private type: build.rs compiles this file against the very
 * source tree rdkafka-sys configured and built (its DEP_RDKAFKA_ROOT), so the layout read here
 * is that of the library linked into the binary; a librdkafka without these fields fails the
 * build instead of reading the wrong bytes.
 */
#include "rdkafka_int.h"
#include "rdkafka_msg.h"

/* 0: the message certainly has no headers (rd_kafka_message_headers() would answer
 * RD_KAFKA_RESP_ERR__NOENT); 1: it may have some (ask rd_kafka_message_headers()). */
int streamscore_message_may_have_headers(const rd_kafka_message_t *rkmessage) {
        const rd_kafka_msg_t *rkm =
            rd_kafka_message2msg((rd_kafka_message_t *)rkmessage);
        const rd_kafkap_bytes_t *binhdrs;

        if (rkm->rkm_headers) /* already parsed (or set by the application) */
                return 1;
        if (rkm->rkm_flags & RD_KAFKA_MSG_F_PRODUCER)
                return 0; /* a producer's message has rkm_headers or none */
        binhdrs = &rkm->rkm_u.consumer.binhdrs;
        if (RD_KAFKAP_BYTES_LEN(binhdrs) == 0)
                return 0; /* no header bytes (v0/v1 message sets, or none) */
        /* HeaderCount 0, the only single-byte encoding of it */
        return ((const unsigned char *)binhdrs->data)[0] != 0x00;
}
