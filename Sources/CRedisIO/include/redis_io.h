#ifndef REDIS_IO_H
#define REDIS_IO_H

/* The transport's whole C boundary: sockets (TCP, Unix, TLS through the system OpenSSL), the RESP
   reader of hiredis, and the epoll/eventfd primitives of the event loop. Swift sees only the
   opaque types and plain values declared here, never a hiredis or OpenSSL structure.

   Every function that can fail returns a status and fills a rio_error; every object created here
   is freed by exactly one call of its free function. */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* What went wrong, as the transport's error codes see it. */
enum {
    RIO_OK = 0,
    RIO_E_REFUSED = 1,     /* nothing listens there (ECONNREFUSED, no such socket file) */
    RIO_E_TIMEOUT = 2,     /* the connect, handshake or round trip ran out of time */
    RIO_E_RESOLVE = 3,     /* the host name did not resolve */
    RIO_E_IO = 4,          /* any other system error */
    RIO_E_CLOSED = 5,      /* the peer closed or reset the connection */
    RIO_E_PROTOCOL = 6,    /* the bytes are not RESP */
    RIO_E_TLS = 7,         /* TLS set-up or handshake failed (not a certificate verdict) */
    RIO_E_CERTIFICATE = 8, /* the server's certificate was rejected */
    RIO_E_NOMEM = 9,
    RIO_E_INVALID = 10,    /* an argument that cannot work (path too long, port out of range) */
    RIO_E_BOUND = 11       /* RESP, but one reply past the reader's bounds (below) */
};

/* The most bytes a connection receives without a complete reply among them (64 MiB): past
   that the read fails with RIO_E_BOUND and the connection is dropped. Lock replies are a few
   bytes; INFO and script replies a few kilobytes. */
#define RIO_MAX_UNPARSED_BYTES (64 * 1024 * 1024)

/* The most array elements one reply may announce, its nested arrays' included (65,536): past
   that the read fails with RIO_E_BOUND and the connection is dropped. hiredis 0.14 allocates
   an announced array's slots at once (up to 2^31 of them) and walks them all when the reply is
   freed, and each element costs some 60 bytes however few bytes it came in: a bound on bytes
   alone bounds neither the time nor the memory. Lock replies have a handful of elements. */
#define RIO_MAX_REPLY_ELEMENTS 65536

typedef struct rio_error {
    int code;
    int sys_errno;
    char message[256];
} rio_error;

/* ---- TLS client configuration (an SSL_CTX) ---- */

typedef struct rio_tls rio_tls;

/* ca_file: PEM bundle of trusted CAs, or NULL for the system's default trust store.
   cert_file/key_file: the client's certificate chain and key for mutual TLS, or NULL.
   verify_peer: 0 accepts any certificate (testing only). Returns NULL with err set. */
rio_tls *rio_tls_create(const char *ca_file, const char *cert_file, const char *key_file, int verify_peer, rio_error *err);
void rio_tls_free(rio_tls *tls);

/* Whether `name` (a host or TLS server name) is an IP address to the resolver, with the address
   written to `out` (`size` bytes, at least INET6_ADDRSTRLEN; else 0) in the form a certificate's
   IP address is matched against: an IPv4 or IPv6 address (an IPv4-mapped one, `::ffff:a.b.c.d`,
   as its IPv4 address); an IPv6 address with a zone (`fe80::1%eth0`, `::1%1`) without it (a zone
   is this machine's: no certificate holds one); an IPv4 address in another form getaddrinfo
   reads as one (`127.1`, `0x7f.0.0.1`, `2130706433`, `0177.0.0.1` in octal, with any number of
   leading zeros: inet_aton's forms) in dotted decimal. Such a name is connected to as that
   address, so the TLS handshake verifies it as that address and sends no SNI: as a DNS name, a
   certificate issued for the text `127.1` would pass, and OpenSSL would read `0177.0.0.1` as
   177.0.0.1. 1 for an address, 0 for a DNS name. */
int rio_ip_identity(const char *name, char *out, size_t size);

/* The name a TLS handshake sends (SNI) and requires of the certificate for the DNS name `name`
   (not an address: see rio_ip_identity): `name` without the root dot of a fully qualified name
   (`cache.example.` as `cache.example`), which neither holds (RFC 6066 section 3: the SNI host
   name is sent "without a trailing dot"; Go's crypto/tls drops it likewise); a name whose bare
   form would read as an address, or that ends in two dots, as it is. A new string the caller
   frees; NULL when out of memory. */
char *rio_tls_name(const char *name);

/* ---- Connections ---- */

typedef struct rio_conn rio_conn;

/* Connects within timeout_ms (resolution, TCP connect and TLS handshake together), blocking the
   calling thread. With tls, server_name (may be NULL) is sent as SNI when it is a DNS name and,
   with verify_host, must match the certificate (DNS name or IP address). The returned
   connection's socket is non-blocking, close-on-exec, TCP_NODELAY and keep-alive. A handshake
   that fails on an answer in RESP fails as RIO_E_TLS saying the port speaks plain RESP; one that
   gets no byte back by the deadline while a plain PING on a second connection to the same
   address (sent at half the handshake's time, closed before this returns) got a RESP answer
   times out (RIO_E_TIMEOUT) saying so. A clean close before the handshake is done is
   RIO_E_CLOSED. */
int rio_connect_tcp(const char *host, int port, int timeout_ms, const rio_tls *tls, const char *server_name,
                    int verify_host, rio_conn **out, rio_error *err);
int rio_connect_unix(const char *path, int timeout_ms, rio_conn **out, rio_error *err);

/* The socket (for epoll); the connection keeps owning it. */
int rio_conn_fd(const rio_conn *conn);

/* 1 when any byte came from the server on this connection (its replies, not a TLS handshake's
   records), else 0 (also for NULL). */
int rio_conn_received(const rio_conn *conn);

/* What the socket is connected to, NUL-terminated in buffer (size bytes): a numeric address
   ("192.0.2.7:6379", "[::1]:6379"; an IPv4-mapped IPv6 address as its IPv4 address), with the
   server name the TLS handshake sent, if it sent one (" sni=redis.example"), or for a Unix
   socket its file's device and inode as stat saw them right after the connect
   ("unix:64769:1234": one file however many paths or links lead to it). */
int rio_conn_peer(const rio_conn *conn, char *buffer, size_t size, rio_error *err);

/* Writes what the socket accepts now. Returns the bytes written (0 when it would block), or -1
   with err set. A TLS connection may need the socket readable before it can write: *wants_read
   is then set to 1. */
ssize_t rio_conn_write(rio_conn *conn, const void *bytes, size_t length, int *wants_read, rio_error *err);

/* Reads what the socket has now into the reply reader, until the socket is drained (so an
   edge-triggered poller reports the next bytes), or about 1 MiB (rio_conn_more then says so).
   Over plain TCP or a Unix socket a read that returns less than asked for shows the socket
   drained: with to_eof 0 reading stops there, saving the read that would return EAGAIN (bytes
   or a FIN that come later raise a new edge-triggered event). With to_eof 1 it reads on to
   EAGAIN or EOF: for an event that reported a hang-up (the FIN may have come with the last
   bytes) or urgent data (a read stops short at its mark, with more bytes queued behind it). Over
   TLS the same holds for the session's reads of the socket, once the session holds no bytes of
   its own (a record or part of one read ahead): SSL_read returns one record at a time.
   Returns the bytes read; sets *failed with err on EOF (RIO_E_CLOSED), a socket error or bytes
   that are not RESP. Replies read before a failure are still taken with rio_conn_next_reply. */
size_t rio_conn_read(rio_conn *conn, int to_eof, int *failed, int *wants_write, rio_error *err);

/* Whether the last rio_conn_read stopped before the socket was drained (its size limit), or
   the TLS layer holds decrypted bytes not yet read: read again before waiting. (Not bytes of a
   record still incomplete: reading again could not finish it, and the rest raises an event.) */
int rio_conn_pending(const rio_conn *conn);

/* When the kernel received the bytes of the connection's last read that returned any, in
   CLOCK_REALTIME nanoseconds (SO_TIMESTAMPNS, asked for on TCP sockets), or 0 when it did not
   say (a Unix socket; bytes queued before timestamps were on). */
int64_t rio_conn_arrival_realtime_ns(const rio_conn *conn);

/* The calling thread's note of the reply whose handler it calls now: when the reply's bytes
   arrived (a value of rio_conn_arrival_realtime_ns; 0: not known), for the handler to read
   with rio_delivery_times. */
typedef struct rio_delivery {
    int64_t arrival_realtime_ns;
    /* For a command that waited behind an earlier command's reply and was written by the
       thread that read it: when that reply arrived (CLOCK_REALTIME nanoseconds) and when the
       command was written (CLOCK_BOOTTIME nanoseconds); 0 and 0 otherwise; -1 and 0 when it was
       written before that reply was read (how long the node took is not known). */
    int64_t released_realtime_ns;
    int64_t written_boottime_ns;
    /* 1: the arrival is the reply's own (the last bytes of the read that brought it were its
       last); 0: bytes came after it in that read, so it arrived at or before. */
    int exact;
} rio_delivery;

/* Sets the calling thread's note. */
void rio_set_delivery(rio_delivery next);

/* The calling thread's note: the arrival as a CLOCK_BOOTTIME reading in nanoseconds (now, less
   how long ago by the wall clock), how long the command was held between the earlier reply's
   arrival and its write (nanoseconds, 0 when it was not, -1 when not known), and whether the arrival is the
   reply's own or a bound (see rio_delivery). Returns 1 with all set, or 0 when there is no
   note or the arrival cannot be placed (the wall clock stepped back since). */
int rio_delivery_times(int64_t *arrival_boottime_ns, int64_t *held_ns, int *exact);

typedef struct rio_reply rio_reply;

/* Whether the reader holds no bytes not yet taken as replies (and the connection is plain TCP:
   OpenSSL may hold bytes of its own): after the last reply of a read, that reply's last bytes
   were the read's last. */
int rio_conn_reader_empty(const rio_conn *conn);

/* Takes the next complete reply from the reader: 1 with *out set (free it with rio_reply_free),
   0 when none is complete, -1 with err set when the stream is not RESP. */
int rio_conn_next_reply(rio_conn *conn, rio_reply **out, rio_error *err);

/* Writes all of bytes, then waits for one reply, within timeout_ms (for the connect handshake:
   AUTH, SELECT). Returns RIO_OK with *out set, or an error code with err set. */
int rio_conn_roundtrip(rio_conn *conn, const void *bytes, size_t length, int timeout_ms, rio_reply **out, rio_error *err);

/* Whether an idle connection's peer has closed it (EOF, an error waiting on the socket, or a
   TLS close_notify). */
int rio_conn_peer_closed(rio_conn *conn);

/* Shuts the socket down in both directions (wakes anything waiting on it); keeps it open. */
void rio_conn_shutdown(rio_conn *conn);

/* Closes the socket and frees the connection, its TLS session and its reader. */
void rio_conn_free(rio_conn *conn);

/* ---- Replies ---- */

enum {
    RIO_REPLY_STRING = 1,
    RIO_REPLY_ARRAY = 2,
    RIO_REPLY_INTEGER = 3,
    RIO_REPLY_NIL = 4,
    RIO_REPLY_STATUS = 5,
    RIO_REPLY_ERROR = 6
};

int rio_reply_type(const rio_reply *reply);
long long rio_reply_integer(const rio_reply *reply);
/* The bytes of a string, status or error reply (NULL with *length 0 for others). */
const char *rio_reply_bytes(const rio_reply *reply, size_t *length);
size_t rio_reply_count(const rio_reply *reply);
/* Element index of an array reply, or NULL when out of range. */
const rio_reply *rio_reply_element(const rio_reply *reply, size_t index);
void rio_reply_free(rio_reply *reply);

/* ---- Event loop primitives ---- */

typedef struct rio_event {
    uint64_t token;
    int readable;
    int writable;
    /* A hang-up or an error (EPOLLHUP, EPOLLERR, EPOLLRDHUP). */
    int hangup;
    /* Urgent data pending (EPOLLPRI): a read stops short at its mark. */
    int urgent;
} rio_event;

/* An epoll instance, close-on-exec. Returns the descriptor or -1 with err set. */
int rio_poller_create(rio_error *err);
/* Adds (op 0), changes (1) or removes (2) a descriptor, watching reads, urgent data and
   hang-ups, and writes when want_write; edge-triggered when edge (a reader must then read until
   the socket is drained: see rio_conn_read). Returns 0 or -1 with err set. */
int rio_poller_control(int poller, int op, int fd, int want_write, int edge, uint64_t token, rio_error *err);
/* Waits up to timeout_ms (-1: no limit) and fills at most capacity events. Returns the count, 0
   on timeout or a signal, -1 with err set on failure. */
int rio_poller_wait(int poller, rio_event *events, int capacity, int timeout_ms, rio_error *err);

/* An eventfd for wake-ups, non-blocking and close-on-exec; -1 with err set on failure. */
int rio_waker_create(rio_error *err);
void rio_waker_signal(int waker);
void rio_waker_drain(int waker);

void rio_close_descriptor(int fd);

/* Fills up to `length` bytes at `buffer` from the kernel's secure generator with one
   getrandom(2) call (flags 0: blocks only until the pool is first initialised; a request of
   up to 256 bytes is then filled whole and not interrupted by signals). Returns how many bytes
   it filled: 0 when the call failed. */
size_t rio_random_bytes(void *buffer, size_t length);

/* For tests: leaves an error on the calling thread's OpenSSL error queue, as code of a caller's
   running on an event loop's thread may (the transport must not read it as its own), and says
   whether the queue now holds one (1) or not (0). */
int rio_openssl_leave_error(void);

#endif
