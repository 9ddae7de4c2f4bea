#define _GNU_SOURCE
#include "redis_io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct rio_tls {
    SSL_CTX *context;
};

struct rio_conn {
    int fd;
    SSL *ssl;
    redisReader *reader;
    int undrained; /* the last read stopped at its size limit */
    /* The TLS session's last read from the socket got fewer bytes than it asked for (the
       socket was drained then); cleared by rio_conn_read before it reads. */
    int tls_short_read;
    int received;  /* any byte came from the server */
    /* The first bytes the server sent through the TLS session's socket (at most
       sizeof first_bytes): a handshake that fails on bytes that open a RESP reply met a plain
       port. */
    unsigned char first_bytes[24];
    size_t first_count;
    size_t since_reply; /* bytes fed since the reader last gave a complete reply */
    /* The server name the TLS handshake sent (SNI), or NULL: none is sent for an IP address. */
    char *sent_server_name;
    /* A Unix socket's file, as stat saw it right after the connect (has_file: it could). */
    int has_file;
    dev_t file_device;
    ino_t file_inode;
    /* When the kernel received the bytes of the last read that returned any (SO_TIMESTAMPNS,
       CLOCK_REALTIME nanoseconds), or 0 when it did not say (a Unix socket, bytes queued before
       timestamps were on). */
    int64_t arrival_realtime_ns;
    /* Array elements announced by the reply being read (RIO_MAX_REPLY_ELEMENTS), and the count
       of the array that went past the bound (0: none did). */
    long long reply_elements;
    int refused_elements;
};

/* ---- errors ---- */

static int fail(rio_error *err, int code, int sys_errno, const char *format, ...) {
    if (err != NULL) {
        err->code = code;
        err->sys_errno = sys_errno;
        va_list arguments;
        va_start(arguments, format);
        vsnprintf(err->message, sizeof err->message, format, arguments);
        va_end(arguments);
    }
    return code;
}

static int fail_errno(rio_error *err, const char *what, int saved) {
    int code = RIO_E_IO;
    if (saved == ECONNREFUSED || saved == ENOENT) {
        code = RIO_E_REFUSED;
    } else if (saved == ETIMEDOUT) {
        code = RIO_E_TIMEOUT;
    } else if (saved == ECONNRESET || saved == EPIPE || saved == ECONNABORTED) {
        code = RIO_E_CLOSED;
    }
    return fail(err, code, saved, "%s: %s", what, strerror(saved));
}

/* Empties this thread's OpenSSL error queue, as SSL_get_error needs before an SSL_read,
   SSL_write or SSL_peek. It is nearly always empty already (every failure here clears what it
   raised; code of the caller's on the same thread may leave errors, and those are cleared
   here), and looking costs a fraction of clearing all of its slots: on every record, that was
   about a twentieth of a TLS cycle's instructions. */
static void empty_error_queue(void) {
    if (ERR_peek_error() != 0) {
        ERR_clear_error();
    }
}

/* The oldest OpenSSL error on this thread's queue as text (the queue is then cleared). */
static void openssl_reason(char *buffer, size_t size) {
    unsigned long code = ERR_get_error();
    if (code == 0) {
        snprintf(buffer, size, "no further detail");
    } else {
        ERR_error_string_n(code, buffer, size);
    }
    ERR_clear_error();
}

/* ---- the TLS session's socket ----
   OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE when the peer has gone,
   and SIGPIPE's default action ends the process. The session's BIO here writes with
   send(MSG_NOSIGNAL), so that failure comes back as EPIPE, at no cost per call (blocking and
   restoring the signal mask around every OpenSSL call took four system calls). The BIO does not
   own the descriptor. Its data is the connection (which outlives its session: conn_release frees
   the session first), so that a read can note a short read (rio_conn_read stops there, as over
   plain TCP). Its method table is made once and kept for the life of the process, as OpenSSL
   keeps its built-in ones. */

/* recv(MSG_DONTWAIT) on conn's socket that also notes when the kernel received the bytes (the
   SO_TIMESTAMPNS message the socket was asked for at its connect; none over a Unix socket):
   tells a reply that came late from one that was read late. */
static ssize_t receive(rio_conn *conn, void *buffer, size_t capacity) {
    struct iovec part = {.iov_base = buffer, .iov_len = capacity};
    union {
        char bytes[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } control;
    struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes};
    ssize_t count = recvmsg(conn->fd, &message, MSG_DONTWAIT);
    if (count > 0) {
        /* The timestamp is the only control message asked for: the first, when there is one. */
        int64_t arrival = 0;
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        if (header != NULL && header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_TIMESTAMPNS
            && header->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(header), sizeof stamp);
            arrival = (int64_t)stamp.tv_sec * 1000000000 + (int64_t)stamp.tv_nsec;
        }
        conn->arrival_realtime_ns = arrival;
    }
    return count;
}

static int socket_bio_write(BIO *bio, const char *data, int length) {
    const rio_conn *conn = BIO_get_data(bio);
    int fd = conn != NULL ? conn->fd : -1;
    BIO_clear_retry_flags(bio);
    ssize_t written = send(fd, data, (size_t)length, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (written < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            BIO_set_retry_write(bio);
        }
        return -1;
    }
    return (int)written;
}

static int socket_bio_read(BIO *bio, char *buffer, int capacity) {
    rio_conn *conn = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (conn == NULL || capacity < 0) {
        return -1;
    }
    ssize_t count = receive(conn, buffer, (size_t)capacity);
    conn->tls_short_read = count > 0 && count < capacity;
    if (count > 0 && conn->first_count < sizeof conn->first_bytes) {
        size_t take = sizeof conn->first_bytes - conn->first_count;
        if ((size_t)count < take) {
            take = (size_t)count;
        }
        memcpy(conn->first_bytes + conn->first_count, buffer, take);
        conn->first_count += take;
    }
    if (count < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            BIO_set_retry_read(bio);
        }
        return -1;
    }
    if (count == 0) {
        /* Read by BIO_eof: OpenSSL tells an end of stream from a failure by it. */
        BIO_set_flags(bio, BIO_FLAGS_IN_EOF);
    }
    return (int)count;
}

static long socket_bio_ctrl(BIO *bio, int command, long number, void *pointer) {
    (void)number;
    switch (command) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0;
    case BIO_C_GET_FD: {
        /* As the socket BIO answers it (SSL_get_fd). */
        const rio_conn *conn = BIO_get_init(bio) ? BIO_get_data(bio) : NULL;
        int fd = conn != NULL ? conn->fd : -1;
        if (pointer != NULL) {
            *(int *)pointer = fd;
        }
        return fd;
    }
    default:
        /* Nothing else applies: no kernel TLS, no datagrams, nothing buffered. */
        return 0;
    }
}

static int socket_bio_create(BIO *bio) {
    BIO_set_data(bio, NULL);
    BIO_set_init(bio, 0);
    return 1;
}

static int socket_bio_destroy(BIO *bio) {
    return bio != NULL;
}

static BIO_METHOD *socket_bio_method_made = NULL;

static void make_socket_bio_method(void) {
    int index = BIO_get_new_index();
    if (index == -1) {
        return;
    }
    BIO_METHOD *method = BIO_meth_new(index | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "redlock socket");
    if (method == NULL) {
        return;
    }
    if (BIO_meth_set_write(method, socket_bio_write) != 1 || BIO_meth_set_read(method, socket_bio_read) != 1
        || BIO_meth_set_ctrl(method, socket_bio_ctrl) != 1 || BIO_meth_set_create(method, socket_bio_create) != 1
        || BIO_meth_set_destroy(method, socket_bio_destroy) != 1) {
        BIO_meth_free(method);
        return;
    }
    socket_bio_method_made = method;
}

/* A BIO over conn's socket for its TLS session, or NULL when OpenSSL could not make one. */
static BIO *socket_bio_new(rio_conn *conn) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (pthread_once(&once, make_socket_bio_method) != 0 || socket_bio_method_made == NULL) {
        return NULL;
    }
    BIO *bio = BIO_new(socket_bio_method_made);
    if (bio == NULL) {
        return NULL;
    }
    BIO_set_data(bio, conn);
    BIO_set_init(bio, 1);
    return bio;
}

/* ---- time ---- */

static long long now_ms(void) {
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) {
        return 0;
    }
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static int remaining_ms(long long deadline) {
    long long left = deadline - now_ms();
    if (left <= 0) {
        return 0;
    }
    return left > 0x7fffffff ? 0x7fffffff : (int)left;
}

/* Waits until fd is ready for events or the deadline passes: 1 ready, 0 timed out, -1 error. */
static int wait_for(int fd, short events, long long deadline, rio_error *err) {
    for (;;) {
        int left = remaining_ms(deadline);
        if (left == 0) {
            return 0;
        }
        struct pollfd entry = {.fd = fd, .events = events, .revents = 0};
        int ready = poll(&entry, 1, left);
        if (ready > 0) {
            return 1;
        }
        if (ready == 0) {
            return 0;
        }
        if (errno != EINTR) {
            fail_errno(err, "poll", errno);
            return -1;
        }
    }
}

/* ---- TLS configuration ---- */

/* The passphrase callback of every context: none is given. OpenSSL's default asks on the
   terminal, from whichever connector threads load a key at once (reading one FILE from
   several threads: a corrupted heap), and blocks without a terminal timeout. The key fails to
   load instead; `asked`, when set, records that a passphrase was wanted. */
static int refuse_passphrase(char *buffer, int size, int writing, void *asked) {
    (void)buffer;
    (void)size;
    (void)writing;
    if (asked != NULL) {
        *(int *)asked = 1;
    }
    return 0;
}

rio_tls *rio_tls_create(const char *ca_file, const char *cert_file, const char *key_file, int verify_peer, rio_error *err) {
    char reason[200];
    int asked = 0;
    ERR_clear_error();
    SSL_CTX *context = SSL_CTX_new(TLS_client_method());
    if (context == NULL) {
        openssl_reason(reason, sizeof reason);
        fail(err, RIO_E_TLS, 0, "could not create a TLS context: %s", reason);
        return NULL;
    }
    SSL_CTX_set_default_passwd_cb(context, refuse_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(context, &asked);
    if (SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) != 1) {
        openssl_reason(reason, sizeof reason);
        fail(err, RIO_E_TLS, 0, "could not require TLS 1.2: %s", reason);
        SSL_CTX_free(context);
        return NULL;
    }
    /* AUTO_RETRY (OpenSSL 3's default, set here all the same): an SSL_read that processed a
       record carrying no application data (a session ticket, a TLS 1.3 KeyUpdate) goes on to
       the next record rather than returning WANT_READ with bytes still held, which
       rio_conn_read's stop at a short read relies on. No renegotiation: a TLS 1.2 server that
       asked for one would have SSL_write read. */
    SSL_CTX_set_mode(context, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    SSL_CTX_set_options(context, SSL_OP_NO_RENEGOTIATION);
    /* Read whatever the socket has in one system call, not one record header and body at a time. */
    SSL_CTX_set_read_ahead(context, 1);
    /* A server that dies (or restarts) sends no close_notify: that is a closed connection, as
       with plain TCP, not a TLS failure (which would count as permanent). */
    SSL_CTX_set_options(context, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (verify_peer) {
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
        int loaded = ca_file != NULL ? SSL_CTX_load_verify_locations(context, ca_file, NULL)
                                     : SSL_CTX_set_default_verify_paths(context);
        if (loaded != 1) {
            openssl_reason(reason, sizeof reason);
            fail(err, RIO_E_TLS, 0, "could not load the CA certificates from %s: %s",
                 ca_file != NULL ? ca_file : "the system's default locations", reason);
            SSL_CTX_free(context);
            return NULL;
        }
    } else {
        SSL_CTX_set_verify(context, SSL_VERIFY_NONE, NULL);
    }
    if (cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(context, cert_file) != 1) {
            openssl_reason(reason, sizeof reason);
            fail(err, RIO_E_TLS, 0, "could not load the client certificate %s: %s", cert_file, reason);
            SSL_CTX_free(context);
            return NULL;
        }
        const char *key = key_file != NULL ? key_file : cert_file;
        if (SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) != 1) {
            openssl_reason(reason, sizeof reason);
            if (asked) {
                fail(err, RIO_E_TLS, 0,
                     "the client key %s is encrypted: it needs a passphrase, which is never asked for (give the key "
                     "unencrypted, in a file only this user can read)",
                     key);
            } else if (key_file != NULL) {
                fail(err, RIO_E_TLS, 0, "could not load the client key %s: %s", key, reason);
            } else {
                fail(err, RIO_E_TLS, 0,
                     "could not load the client key from the certificate file %s (no key file was given, so the key "
                     "is looked for there): %s",
                     key, reason);
            }
            SSL_CTX_free(context);
            return NULL;
        }
        if (SSL_CTX_check_private_key(context) != 1) {
            openssl_reason(reason, sizeof reason);
            fail(err, RIO_E_TLS, 0, "the client key %s does not match the certificate %s: %s", key, cert_file, reason);
            SSL_CTX_free(context);
            return NULL;
        }
    } else if (key_file != NULL) {
        fail(err, RIO_E_TLS, 0, "a client key (%s) needs a client certificate", key_file);
        SSL_CTX_free(context);
        return NULL;
    }
    /* `asked` lives on this stack only: nothing loads a key through the context from now on. */
    SSL_CTX_set_default_passwd_cb_userdata(context, NULL);
    rio_tls *tls = malloc(sizeof *tls);
    if (tls == NULL) {
        fail(err, RIO_E_NOMEM, ENOMEM, "out of memory");
        SSL_CTX_free(context);
        return NULL;
    }
    tls->context = context;
    return tls;
}

void rio_tls_free(rio_tls *tls) {
    if (tls == NULL) {
        return;
    }
    SSL_CTX_free(tls->context);
    free(tls);
}

/* ---- connections ---- */

static void conn_release(rio_conn *conn) {
    free(conn->sent_server_name);
    if (conn->ssl != NULL) {
        SSL_free(conn->ssl);
    }
    if (conn->reader != NULL) {
        redisReaderFree(conn->reader);
    }
    if (conn->fd >= 0) {
        close(conn->fd);
    }
    free(conn);
}

static int is_ip_literal(const char *name) {
    unsigned char address[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, address) == 1 || inet_pton(AF_INET6, name, address) == 1;
}

/* Whether `certificate`'s subject alternative names hold a DNS name. */
static int names_a_dns_name(const X509 *certificate) {
    GENERAL_NAMES *names = X509_get_ext_d2i(certificate, NID_subject_alt_name, NULL, NULL);
    if (names == NULL) {
        return 0;
    }
    int found = 0;
    for (int index = 0; index < sk_GENERAL_NAME_num(names) && !found; index++) {
        const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, index);
        found = name != NULL && name->type == GEN_DNS;
    }
    GENERAL_NAMES_free(names);
    return found;
}

/* The IPv6 address `address` as rio_ip_identity writes it: an IPv4-mapped one
   (`::ffff:127.0.0.1`, which reaches 127.0.0.1) as its IPv4 address, which is how certificates
   name such a server (OpenSSL compares the address's bytes: 16 never match 4). */
static int ipv6_identity(const struct in6_addr *address, char *out, size_t size) {
    if (IN6_IS_ADDR_V4MAPPED(address)) {
        return inet_ntop(AF_INET, &address->s6_addr[12], out, (socklen_t)size) != NULL;
    }
    return inet_ntop(AF_INET6, address, out, (socklen_t)size) != NULL;
}

/* See redis_io.h. */
char *rio_tls_name(const char *name) {
    size_t length = strlen(name);
    if (length > 1 && name[length - 1] == '.' && name[length - 2] != '.') {
        char *bare = strndup(name, length - 1);
        char address[INET6_ADDRSTRLEN];
        /* `127.0.0.1.` is no address to the resolver: without its dot it would be matched as
           the DNS name `127.0.0.1`, which a certificate for another server may hold. */
        if (bare == NULL || !rio_ip_identity(bare, address, sizeof address)) {
            return bare;
        }
        free(bare);
    }
    return strdup(name);
}

/* See redis_io.h. */
int rio_ip_identity(const char *name, char *out, size_t size) {
    struct in_addr v4;
    struct in6_addr v6;
    if (name == NULL || out == NULL || size < INET6_ADDRSTRLEN) {
        return 0;
    }
    if (inet_pton(AF_INET, name, &v4) == 1) {
        return inet_ntop(AF_INET, &v4, out, (socklen_t)size) != NULL;
    }
    if (inet_pton(AF_INET6, name, &v6) == 1) {
        return ipv6_identity(&v6, out, size);
    }
    const char *zone = strchr(name, '%');
    if (zone != NULL) {
        size_t before = (size_t)(zone - name);
        char bare[INET6_ADDRSTRLEN];
        if (before == 0 || before >= sizeof bare) {
            return 0;
        }
        memcpy(bare, name, before);
        bare[before] = '\0';
        return inet_pton(AF_INET6, bare, &v6) == 1 && ipv6_identity(&v6, out, size);
    }
    /* inet_aton stops at white space and accepts what follows: only its own characters here. */
    if (strspn(name, "0123456789abcdefABCDEFxX.") != strlen(name) || inet_aton(name, &v4) == 0) {
        return 0;
    }
    return inet_ntop(AF_INET, &v4, out, (socklen_t)size) != NULL;
}

/* ---- telling a plain port from a TLS one ----
   A plain Redis port reads a TLS ClientHello as the start of an inline command and waits for a
   line end, which the random bytes of the hello may or may not hold: with one, it answers an
   error reply (RESP) that the handshake then fails on; without, it answers nothing and the
   handshake times out, as with a TLS server that is only slow. (redis-server looks for the line
   end with strchr, which stops at the NUL bytes every hello holds near its start: it never
   answers one.) So when half the handshake's time has passed without a byte back, a plain PING
   goes to the same address on a second connection. The handshake still has until its deadline
   (a port that speaks both, as a TLS-sniffing proxy or a managed Redis in a "preferred"
   transit-encryption mode does, may be slow with TLS only); if it got no byte back by then and
   the PING got a RESP answer (a TLS port resets such a connection without a byte), the timeout
   says the port speaks plain RESP. It stays a timeout: silence is no proof, and a port that
   speaks both may answer TLS next time. Anything else on the second connection (no answer, a
   reset, a failed connect) leaves the timeout's message as it was. */

/* Whether a byte from the server can open a RESP reply. A TLS record opens with its content
   type (20 to 24), never one of these. */
static int opens_resp(unsigned char first) {
    return first == '+' || first == '-' || first == ':' || first == '$' || first == '*';
}

/* bytes[0, count) up to the first line end, non-printable bytes as '?', into text. */
static void printable_line(const unsigned char *bytes, size_t count, char *text, size_t size) {
    size_t used = 0;
    for (size_t index = 0; index < count && used + 1 < size; index++) {
        unsigned char byte = bytes[index];
        if (byte == '\r' || byte == '\n') {
            break;
        }
        text[used++] = (byte >= 0x20 && byte < 0x7f) ? (char)byte : '?';
    }
    text[used] = '\0';
}

/* The second connection's PING. state: 0 not sent yet, 1 connecting, 2 PING written, 3 over;
   plain: the answer opened a RESP reply (its first bytes in answer). */
typedef struct plain_probe {
    int fd;
    int state;
    int plain;
    unsigned char answer[24];
    size_t answered;
} plain_probe;

static void probe_end(plain_probe *probe) {
    if (probe->fd >= 0) {
        close(probe->fd);
        probe->fd = -1;
    }
    probe->state = 3;
}

static const char probe_ping[] = "*1\r\n$4\r\nPING\r\n";

/* Writes the PING (14 bytes into an empty socket buffer: all at once, or the probe ends). */
static void probe_write(plain_probe *probe) {
    ssize_t written = send(probe->fd, probe_ping, sizeof probe_ping - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (written != (ssize_t)(sizeof probe_ping - 1)) {
        probe_end(probe);
        return;
    }
    probe->state = 2;
}

/* Connects the probe to the peer of fd (non-blocking); on any failure the probe is over. */
static void probe_start(plain_probe *probe, int fd) {
    probe->state = 3;
    struct sockaddr_storage peer;
    socklen_t size = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &size) != 0) {
        return;
    }
    probe->fd = socket(peer.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe->fd < 0) {
        return;
    }
    if (connect(probe->fd, (struct sockaddr *)&peer, size) == 0) {
        probe_write(probe);
    } else if (errno == EINPROGRESS) {
        probe->state = 1;
    } else {
        probe_end(probe);
    }
}

/* Advances the probe after poll reported revents on it; sets plain when its answer opens a
   RESP reply. */
static void probe_advance(plain_probe *probe, short revents) {
    if (probe->state == 1 && (revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
        int problem = 0;
        socklen_t size = sizeof problem;
        if (getsockopt(probe->fd, SOL_SOCKET, SO_ERROR, &problem, &size) != 0 || problem != 0) {
            probe_end(probe);
        } else {
            probe_write(probe);
        }
        return;
    }
    if (probe->state == 2 && (revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
        ssize_t count = recv(probe->fd, probe->answer, sizeof probe->answer, MSG_DONTWAIT);
        if (count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            return;
        }
        probe->answered = count > 0 ? (size_t)count : 0;
        probe->plain = probe->answered > 0 && opens_resp(probe->answer[0]);
        probe_end(probe);
    }
}

/* Waits until the handshake's socket is ready for events, starting the probe at probe_at when
   no byte came from the server by then and advancing it meanwhile: 1 ready, 0 timed out, -1
   poll failed (err set). */
static int wait_for_handshake(rio_conn *conn, short events, long long deadline, long long probe_at, plain_probe *probe,
                              rio_error *err) {
    for (;;) {
        int left = remaining_ms(deadline);
        if (left == 0) {
            return 0;
        }
        int timeout = left;
        if (probe->state == 0 && conn->first_count == 0) {
            long long until = probe_at - now_ms();
            if (until <= 0) {
                probe_start(probe, conn->fd);
            } else if (until < timeout) {
                timeout = (int)until;
            }
        }
        struct pollfd entries[2] = {
            {.fd = conn->fd, .events = events, .revents = 0},
            {.fd = probe->fd, .events = probe->state == 1 ? POLLOUT : POLLIN, .revents = 0},
        };
        nfds_t watched = (probe->state == 1 || probe->state == 2) ? 2 : 1;
        int ready = poll(entries, watched, timeout);
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail_errno(err, "poll", errno);
            return -1;
        }
        if (watched == 2 && entries[1].revents != 0) {
            probe_advance(probe, entries[1].revents);
        }
        if (entries[0].revents != 0) {
            return 1;
        }
    }
}

/* A handshake that failed (status, err): when the server's first bytes open a RESP reply, a
   plain port's answer to the hello, said so as RIO_E_TLS. Returns the status to report. */
static int plain_answer(const rio_conn *conn, int status, rio_error *err) {
    if (conn->first_count == 0 || !opens_resp(conn->first_bytes[0])) {
        return status;
    }
    char answer[sizeof conn->first_bytes + 1];
    printable_line(conn->first_bytes, conn->first_count, answer, sizeof answer);
    return fail(err, RIO_E_TLS, 0,
                "TLS handshake: the server answered in plain RESP (\"%s\"): this port does not speak TLS; use redis://",
                answer);
}

static int handshake_steps(rio_conn *conn, long long deadline, plain_probe *probe, rio_error *err);

/* Runs the TLS handshake on a connected non-blocking socket until the deadline. */
static int handshake(rio_conn *conn, const rio_tls *tls, const char *server_name, int verify_host, long long deadline, rio_error *err) {
    char reason[200];
    ERR_clear_error();
    conn->ssl = SSL_new(tls->context);
    if (conn->ssl == NULL) {
        openssl_reason(reason, sizeof reason);
        return fail(err, RIO_E_TLS, 0, "could not create a TLS session: %s", reason);
    }
    BIO *bio = socket_bio_new(conn);
    if (bio == NULL) {
        openssl_reason(reason, sizeof reason);
        return fail(err, RIO_E_TLS, 0, "could not attach the TLS session: %s", reason);
    }
    /* The session owns the BIO from here on (SSL_free frees it). */
    SSL_set_bio(conn->ssl, bio, bio);
    if (server_name != NULL && server_name[0] != '\0') {
        char address[INET6_ADDRSTRLEN];
        int literal = rio_ip_identity(server_name, address, sizeof address);
        if (!literal) {
            conn->sent_server_name = rio_tls_name(server_name);
            if (conn->sent_server_name == NULL) {
                return fail(err, RIO_E_NOMEM, ENOMEM, "out of memory");
            }
            server_name = conn->sent_server_name;
        }
        if (!literal && SSL_set_tlsext_host_name(conn->ssl, server_name) != 1) {
            openssl_reason(reason, sizeof reason);
            return fail(err, RIO_E_TLS, 0, "could not set the server name %s: %s", server_name, reason);
        }
        if (verify_host) {
            /* The name must be in the certificate's subject alternative names: never its
               subject's common name (RFC 6125 section 6.4.4; as Go's crypto/tls and browsers),
               and a wildcard only as a whole left-most label (`*.example.com`, not `f*.example.com`). */
            SSL_set_hostflags(conn->ssl, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT | X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            int set = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(conn->ssl), address)
                              : SSL_set1_host(conn->ssl, server_name);
            if (set != 1) {
                openssl_reason(reason, sizeof reason);
                return fail(err, RIO_E_TLS, 0, "could not require the name %s: %s", server_name, reason);
            }
        }
    }
    plain_probe probe = {.fd = -1, .state = 0, .plain = 0, .answered = 0};
    int status = handshake_steps(conn, deadline, &probe, err);
    probe_end(&probe);
    /* Whatever failed it, bytes that open a RESP reply came from a plain port (a TLS server's
       open with a record's content type). */
    return status == RIO_OK ? status : plain_answer(conn, status, err);
}

/* The alert the server sent that OpenSSL's error `error` records (a received alert N has the
   reason SSL_AD_REASON_OFFSET + N; RFC 8446 section 6.2 names them), or -1 for an error that
   records none (one raised here: a verdict, a malformed record). */
static int received_alert(unsigned long error) {
    if (error == 0 || ERR_GET_LIB(error) != ERR_LIB_SSL || ERR_GET_REASON(error) < SSL_AD_REASON_OFFSET) {
        return -1;
    }
    return ERR_GET_REASON(error) - SSL_AD_REASON_OFFSET;
}

/* Whether the thread's OpenSSL errors (first or last) record a fatal alert the server sent
   about this client's certificate or TLS settings: no certificate where one is required, one
   it rejects (also one not valid yet), no protocol version or cipher in common, a server name
   it does not serve. A new connection with the same settings gets the same. Other alerts
   (internal_error: a server or key backend failing for now) may pass. `alerted`, when not
   NULL, is set to whether they record any alert from the server. */
static int refuses_client(int *alerted) {
    unsigned long errors[2] = {ERR_peek_error(), ERR_peek_last_error()};
    int refusing = 0;
    for (int index = 0; index < 2; index++) {
        int alert = received_alert(errors[index]);
        if (alerted != NULL && alert >= 0) {
            *alerted = 1;
        }
        switch (alert) {
        case SSL3_AD_HANDSHAKE_FAILURE:
        case SSL3_AD_BAD_CERTIFICATE:
        case SSL3_AD_UNSUPPORTED_CERTIFICATE:
        case SSL3_AD_CERTIFICATE_REVOKED:
        case SSL3_AD_CERTIFICATE_EXPIRED:
        case SSL3_AD_CERTIFICATE_UNKNOWN:
        case TLS1_AD_UNKNOWN_CA:
        case TLS1_AD_ACCESS_DENIED:
        case TLS1_AD_PROTOCOL_VERSION:
        case TLS1_AD_INSUFFICIENT_SECURITY:
        case TLS1_AD_UNRECOGNIZED_NAME:
        case TLS13_AD_CERTIFICATE_REQUIRED:
            refusing = 1;
            break;
        default:
            break;
        }
    }
    return refusing;
}

/* SSL_connect until done, failed or the deadline, with the probe for a plain port (above). */
static int handshake_steps(rio_conn *conn, long long deadline, plain_probe *probe, rio_error *err) {
    char reason[200];
    long long probe_at = now_ms() + remaining_ms(deadline) / 2;
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int result = SSL_connect(conn->ssl);
        int saved = errno;
        if (result == 1) {
            return RIO_OK;
        }
        int reason_code = SSL_get_error(conn->ssl, result);
        short events;
        if (reason_code == SSL_ERROR_WANT_READ) {
            events = POLLIN;
        } else if (reason_code == SSL_ERROR_WANT_WRITE) {
            events = POLLOUT;
        } else if (reason_code == SSL_ERROR_ZERO_RETURN) {
            /* The server ended the stream cleanly (a FIN: SSL_OP_IGNORE_UNEXPECTED_EOF makes it
               this) before the handshake was done: a TLS server at maxclients does, as does one
               going down. Closed, as with plain TCP, not a TLS failure. */
            ERR_clear_error();
            return fail(err, RIO_E_CLOSED, 0, "TLS handshake: the server closed the connection (is this a TLS port?)");
        } else {
            /* Only a verification that was asked for rejects: without it OpenSSL still records
               its verdict on the chain, which says nothing about why the handshake failed. */
            long verdict = SSL_get_verify_mode(conn->ssl) != SSL_VERIFY_NONE ? SSL_get_verify_result(conn->ssl) : X509_V_OK;
            if (verdict != X509_V_OK) {
                ERR_clear_error();
                /* A certificate that names its host only in the subject's common name (older
                   ones do, and worked with clients that still read it) is told so. */
                STACK_OF(X509) *chain = SSL_get_peer_cert_chain(conn->ssl);
                X509 *leaf = chain != NULL && sk_X509_num(chain) > 0 ? sk_X509_value(chain, 0) : NULL;
                if (verdict == X509_V_ERR_HOSTNAME_MISMATCH && leaf != NULL && !names_a_dns_name(leaf)) {
                    return fail(err, RIO_E_CERTIFICATE, 0,
                                "certificate rejected: %s: it names no DNS name in its subject alternative names "
                                "(a common name is never read, RFC 6125)",
                                X509_verify_cert_error_string(verdict));
                }
                return fail(err, RIO_E_CERTIFICATE, 0, "certificate rejected: %s",
                            X509_verify_cert_error_string(verdict));
            }
            if (reason_code == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
                ERR_clear_error();
                if (saved == 0 || result == 0) {
                    return fail(err, RIO_E_CLOSED, 0, "TLS handshake: the server closed the connection (is this a TLS port?)");
                }
                return fail_errno(err, "TLS handshake", saved);
            }
            /* An alert from the server that is no refusal of this client may pass: closed, as
               after the handshake. */
            int alerted = 0;
            int passing = !refuses_client(&alerted) && alerted;
            openssl_reason(reason, sizeof reason);
            return fail(err, passing ? RIO_E_CLOSED : RIO_E_TLS, 0, "TLS handshake failed: %s", reason);
        }
        int ready = wait_for_handshake(conn, events, deadline, probe_at, probe, err);
        if (ready == 0 && probe->plain && conn->first_count == 0) {
            /* A timeout all the same: a port that speaks both protocols may only be slow with
               TLS this time. The message says what the PING showed. */
            char answer[sizeof probe->answer + 1];
            printable_line(probe->answer, probe->answered, answer, sizeof answer);
            return fail(err, RIO_E_TIMEOUT, ETIMEDOUT,
                        "TLS handshake timed out with no byte back, while a plain PING on a second connection got "
                        "\"%s\": the port speaks plain RESP (if it speaks only that, use redis://)",
                        answer);
        }
        if (ready == 0) {
            return fail(err, RIO_E_TIMEOUT, ETIMEDOUT, "TLS handshake timed out (does the port speak TLS?)");
        }
        if (ready < 0) {
            return err != NULL ? err->code : RIO_E_IO;
        }
    }
}

/* ---- the reply reader ----
   hiredis's reader with its own object functions but for arrays: an array is made only while
   the reply's arrays announce at most RIO_MAX_REPLY_ELEMENTS elements in all. A refusal makes
   hiredis fail the read ("Out of memory"); reader_failure tells the bound instead. The default
   functions are taken from a reader hiredis made (they are not exported), once. */

static redisReplyObjectFunctions bounded_functions;
static void *(*default_create_array)(const redisReadTask *, int) = NULL;

static void *create_bounded_array(const redisReadTask *task, int elements) {
    rio_conn *conn = task->privdata;
    if (conn == NULL || default_create_array == NULL) {
        return NULL;
    }
    if (elements > 0) {
        conn->reply_elements += elements;
        if (conn->reply_elements > RIO_MAX_REPLY_ELEMENTS) {
            conn->refused_elements = elements;
            return NULL;
        }
    }
    return default_create_array(task, elements);
}

static void make_bounded_functions(void) {
    redisReader *model = redisReaderCreate();
    if (model == NULL || model->fn == NULL || model->fn->createArray == NULL) {
        if (model != NULL) {
            redisReaderFree(model);
        }
        return;
    }
    bounded_functions = *model->fn;
    default_create_array = model->fn->createArray;
    bounded_functions.createArray = create_bounded_array;
    redisReaderFree(model);
}

/* A reader for conn whose replies' arrays are bounded, or NULL (out of memory). */
static redisReader *bounded_reader(rio_conn *conn) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (pthread_once(&once, make_bounded_functions) != 0 || default_create_array == NULL) {
        return NULL;
    }
    redisReader *reader = redisReaderCreateWithFunctions(&bounded_functions);
    if (reader != NULL) {
        reader->privdata = conn;
    }
    return reader;
}

/* The reader's failure as err: the element bound when that is what failed it. */
static int reader_failure(const rio_conn *conn, rio_error *err) {
    if (conn->refused_elements != 0) {
        return fail(err, RIO_E_BOUND, 0,
                    "protocol error: a reply announced %lld array elements (the last array %d), past %d in one reply (the replies this library reads are small)",
                    conn->reply_elements, conn->refused_elements, RIO_MAX_REPLY_ELEMENTS);
    }
    return fail(err, RIO_E_PROTOCOL, 0, "protocol error: %s", conn->reader->errstr);
}

/* Wraps a connected socket: the reader, TLS when asked. Frees everything on failure. */
static int finish(int fd, const rio_tls *tls, const char *server_name, int verify_host, long long deadline, rio_conn **out, rio_error *err) {
    rio_conn *conn = calloc(1, sizeof *conn);
    if (conn == NULL) {
        close(fd);
        return fail(err, RIO_E_NOMEM, ENOMEM, "out of memory");
    }
    conn->fd = fd;
    conn->reader = bounded_reader(conn);
    if (conn->reader == NULL) {
        conn_release(conn);
        return fail(err, RIO_E_NOMEM, ENOMEM, "could not create a reply reader");
    }
    if (tls != NULL) {
        int status = handshake(conn, tls, server_name, verify_host, deadline, err);
        if (status != RIO_OK) {
            conn_release(conn);
            return status;
        }
    }
    *out = conn;
    return RIO_OK;
}

/* Completes a non-blocking connect: RIO_OK, or an error code with err set. */
static int await_connect(int fd, long long deadline, rio_error *err) {
    int ready = wait_for(fd, POLLOUT, deadline, err);
    if (ready == 0) {
        return fail(err, RIO_E_TIMEOUT, ETIMEDOUT, "connect timed out");
    }
    if (ready < 0) {
        return err != NULL ? err->code : RIO_E_IO;
    }
    int problem = 0;
    socklen_t size = sizeof problem;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &problem, &size) != 0) {
        return fail_errno(err, "getsockopt", errno);
    }
    if (problem != 0) {
        return fail_errno(err, "connect", problem);
    }
    return RIO_OK;
}

/* ---- name resolution within a deadline ----
   getaddrinfo(3) cannot be given a timeout, and a resolver that does not answer blocks it for
   as long as resolv.conf's timeouts and attempts allow. A host name is therefore resolved on a
   detached thread of its own; the connecting thread waits for it until the connect deadline
   and, if it runs out, returns a timeout and leaves the thread to free what it finds. IP
   literals are converted at once, without a thread. */

typedef struct resolution {
    pthread_mutex_t lock;
    pthread_cond_t finished;
    int done;
    int references;
    int status;
    int saved_errno;
    struct addrinfo *result;
    char *host;
    char service[8];
} resolution;

static void resolution_release(resolution *job) {
    pthread_mutex_lock(&job->lock);
    int left = --job->references;
    pthread_mutex_unlock(&job->lock);
    if (left > 0) {
        return;
    }
    if (job->result != NULL) {
        freeaddrinfo(job->result);
    }
    free(job->host);
    pthread_cond_destroy(&job->finished);
    pthread_mutex_destroy(&job->lock);
    free(job);
}

static void *resolve_on_thread(void *argument) {
    resolution *job = argument;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    struct addrinfo *result = NULL;
    int status = getaddrinfo(job->host, job->service, &hints, &result);
    int saved = errno;
    pthread_mutex_lock(&job->lock);
    job->status = status;
    job->saved_errno = saved;
    job->result = result;
    job->done = 1;
    pthread_cond_signal(&job->finished);
    pthread_mutex_unlock(&job->lock);
    resolution_release(job);
    return NULL;
}

/* Resolves host:service before deadline. Returns 0 with *out set (free with freeaddrinfo), or
   an error code with err set. */
static int resolve(const char *host, const char *service, long long deadline, struct addrinfo **out, rio_error *err) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (is_ip_literal(host)) {
        hints.ai_flags |= AI_NUMERICHOST;
        int status = getaddrinfo(host, service, &hints, out);
        if (status != 0) {
            return fail(err, RIO_E_RESOLVE, 0, "could not resolve %s: %s", host, gai_strerror(status));
        }
        return RIO_OK;
    }
    resolution *job = calloc(1, sizeof *job);
    if (job == NULL) {
        return fail(err, RIO_E_NOMEM, ENOMEM, "out of memory");
    }
    job->host = strdup(host);
    if (job->host == NULL) {
        free(job);
        return fail(err, RIO_E_NOMEM, ENOMEM, "out of memory");
    }
    snprintf(job->service, sizeof job->service, "%s", service);
    pthread_condattr_t attributes;
    if (pthread_mutex_init(&job->lock, NULL) != 0) {
        free(job->host);
        free(job);
        return fail(err, RIO_E_IO, 0, "could not create a lock for name resolution");
    }
    int attributes_made = pthread_condattr_init(&attributes) == 0;
    int condition_made = attributes_made && pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC) == 0
        && pthread_cond_init(&job->finished, &attributes) == 0;
    if (attributes_made) {
        pthread_condattr_destroy(&attributes);
    }
    if (!condition_made) {
        pthread_mutex_destroy(&job->lock);
        free(job->host);
        free(job);
        return fail(err, RIO_E_IO, 0, "could not create a condition for name resolution");
    }
    job->references = 2;
    pthread_t thread;
    pthread_attr_t thread_attributes;
    int started = pthread_attr_init(&thread_attributes);
    if (started == 0) {
        (void)pthread_attr_setdetachstate(&thread_attributes, PTHREAD_CREATE_DETACHED);
        (void)pthread_attr_setstacksize(&thread_attributes, 256 * 1024);
        started = pthread_create(&thread, &thread_attributes, resolve_on_thread, job);
        pthread_attr_destroy(&thread_attributes);
    }
    if (started != 0) {
        job->references = 1;
        resolution_release(job);
        return fail(err, RIO_E_IO, started, "could not start name resolution: %s", strerror(started));
    }
    struct timespec until;
    until.tv_sec = (time_t)(deadline / 1000);
    until.tv_nsec = (long)(deadline % 1000) * 1000000L;
    pthread_mutex_lock(&job->lock);
    while (!job->done) {
        if (pthread_cond_timedwait(&job->finished, &job->lock, &until) == ETIMEDOUT) {
            break;
        }
    }
    int done = job->done;
    int status = job->status;
    int saved = job->saved_errno;
    struct addrinfo *result = job->result;
    if (done) {
        job->result = NULL; /* now the caller's */
    }
    pthread_mutex_unlock(&job->lock);
    resolution_release(job);
    if (!done) {
        return fail(err, RIO_E_TIMEOUT, ETIMEDOUT, "resolving %s timed out", host);
    }
    if (status != 0) {
        if (result != NULL) {
            freeaddrinfo(result);
        }
        if (status == EAI_SYSTEM) {
            return fail(err, RIO_E_RESOLVE, saved, "could not resolve %s: %s", host, strerror(saved));
        }
        return fail(err, RIO_E_RESOLVE, 0, "could not resolve %s: %s", host, gai_strerror(status));
    }
    *out = result;
    return RIO_OK;
}

int rio_connect_tcp(const char *host, int port, int timeout_ms, const rio_tls *tls, const char *server_name,
                    int verify_host, rio_conn **out, rio_error *err) {
    if (out == NULL || host == NULL) {
        return fail(err, RIO_E_INVALID, EINVAL, "no host");
    }
    *out = NULL;
    if (port < 1 || port > 65535) {
        return fail(err, RIO_E_INVALID, EINVAL, "port %d out of range", port);
    }
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo *addresses = NULL;
    int resolved = resolve(host, service, deadline, &addresses, err);
    if (resolved != RIO_OK) {
        return resolved;
    }
    int status = fail(err, RIO_E_RESOLVE, 0, "%s has no address", host);
    int fd = -1;
    for (struct addrinfo *address = addresses; address != NULL; address = address->ai_next) {
        if (remaining_ms(deadline) == 0) {
            status = fail(err, RIO_E_TIMEOUT, ETIMEDOUT, "connect timed out");
            break;
        }
        fd = socket(address->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            status = fail_errno(err, "socket", errno);
            continue;
        }
        if (connect(fd, address->ai_addr, address->ai_addrlen) == 0) {
            status = RIO_OK;
        } else if (errno == EINPROGRESS) {
            status = await_connect(fd, deadline, err);
        } else {
            status = fail_errno(err, "connect", errno);
        }
        if (status == RIO_OK) {
            break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(addresses);
    if (status != RIO_OK) {
        return status;
    }
    int on = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0) {
        int saved = errno;
        close(fd);
        return fail_errno(err, "setsockopt", saved);
    }
    int idle = 15, interval = 5, count = 3;
    /* Receive timestamps are advisory too (see receive): without them a late reply is not
       told from one read late. */
    (void)setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    /* Keep-alive timings are advisory: a kernel without them still has SO_KEEPALIVE. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    return finish(fd, tls, server_name != NULL ? server_name : host, verify_host, deadline, out, err);
}

int rio_connect_unix(const char *path, int timeout_ms, rio_conn **out, rio_error *err) {
    if (out == NULL || path == NULL) {
        return fail(err, RIO_E_INVALID, EINVAL, "no path");
    }
    *out = NULL;
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address.sun_path) {
        return fail(err, RIO_E_INVALID, ENAMETOOLONG, "socket path longer than %zu bytes", sizeof address.sun_path - 1);
    }
    strcpy(address.sun_path, path);
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return fail_errno(err, "socket", errno);
    }
    int status = RIO_OK;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        if (errno == EINPROGRESS) {
            status = await_connect(fd, deadline, err);
        } else if (errno == EAGAIN) {
            /* A Unix socket's backlog is full: nothing is in progress. */
            status = fail(err, RIO_E_REFUSED, EAGAIN, "connect: the server's listen backlog is full");
        } else {
            status = fail_errno(err, "connect", errno);
        }
    }
    if (status != RIO_OK) {
        close(fd);
        return status;
    }
    /* The socket file names the server (the path it bound, as getpeername tells, does not: two
       servers may bind the same relative path, or one path later moved). */
    struct stat file;
    int has_file = stat(path, &file) == 0;
    status = finish(fd, NULL, NULL, 0, deadline, out, err);
    if (status == RIO_OK && has_file) {
        (*out)->has_file = 1;
        (*out)->file_device = file.st_dev;
        (*out)->file_inode = file.st_ino;
    }
    return status;
}

int rio_conn_fd(const rio_conn *conn) {
    return conn != NULL ? conn->fd : -1;
}

int rio_conn_received(const rio_conn *conn) {
    return conn != NULL && conn->received ? 1 : 0;
}

int rio_conn_peer(const rio_conn *conn, char *buffer, size_t size, rio_error *err) {
    if (conn == NULL || buffer == NULL || size == 0) {
        return fail(err, RIO_E_INVALID, 0, "no connection or buffer");
    }
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    memset(&address, 0, sizeof address);
    if (getpeername(conn->fd, (struct sockaddr *)&address, &length) != 0) {
        return fail_errno(err, "getpeername", errno);
    }
    int written;
    if (address.ss_family == AF_UNIX) {
        if (!conn->has_file) {
            return fail(err, RIO_E_INVALID, 0, "the socket file could not be looked at");
        }
        written = snprintf(buffer, size, "unix:%llu:%llu", (unsigned long long)conn->file_device, (unsigned long long)conn->file_inode);
    } else if (address.ss_family == AF_INET || address.ss_family == AF_INET6) {
        if (address.ss_family == AF_INET6) {
            /* ::ffff:a.b.c.d is a.b.c.d: one server, however the address was written. */
            const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&address;
            if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
                struct sockaddr_in v4;
                memset(&v4, 0, sizeof v4);
                v4.sin_family = AF_INET;
                v4.sin_port = v6->sin6_port;
                memcpy(&v4.sin_addr, &v6->sin6_addr.s6_addr[12], sizeof v4.sin_addr);
                memset(&address, 0, sizeof address);
                memcpy(&address, &v4, sizeof v4);
                length = sizeof v4;
            }
        }
        char host[NI_MAXHOST];
        char service[NI_MAXSERV];
        int status = getnameinfo((const struct sockaddr *)&address, length, host, sizeof host, service, sizeof service,
                                 NI_NUMERICHOST | NI_NUMERICSERV);
        if (status != 0) {
            return fail(err, RIO_E_IO, 0, "getnameinfo: %s", gai_strerror(status));
        }
        /* A gateway on one address may route each server name to another server. */
        const char *sni = conn->sent_server_name;
        written = snprintf(buffer, size, address.ss_family == AF_INET6 ? "[%s]:%s%s%s" : "%s:%s%s%s", host, service,
                           sni != NULL ? " sni=" : "", sni != NULL ? sni : "");
    } else {
        return fail(err, RIO_E_INVALID, 0, "address family %d", (int)address.ss_family);
    }
    if (written < 0 || (size_t)written >= size) {
        return fail(err, RIO_E_INVALID, 0, "peer address longer than %zu bytes", size);
    }
    return RIO_OK;
}

/* Classifies a failed SSL_read/SSL_write; 0 when it only has to wait (sets *wants). */
static int tls_failure(rio_conn *conn, int result, int saved, int *wants_read, int *wants_write, const char *what, rio_error *err) {
    int reason_code = SSL_get_error(conn->ssl, result);
    switch (reason_code) {
    case SSL_ERROR_WANT_READ:
        if (wants_read != NULL) {
            *wants_read = 1;
        }
        return 0;
    case SSL_ERROR_WANT_WRITE:
        if (wants_write != NULL) {
            *wants_write = 1;
        }
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        return fail(err, RIO_E_CLOSED, 0, "the server closed the TLS session");
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
            ERR_clear_error();
            if (saved == 0 || result == 0) {
                return fail(err, RIO_E_CLOSED, 0, "the server closed the connection");
            }
            return fail_errno(err, what, saved);
        }
        /* OpenSSL has the detail */
        __attribute__((fallthrough));
    default: {
        /* After the handshake a TLS error breaks this connection; a new one may well work (a
           restarted server), so it is not reported as a (permanent) TLS set-up failure. Except
           the server's refusal of this client before any reply: a TLS 1.3 server checks the
           client's certificate after the client's side of the handshake ended, and says so in
           an alert on the first read (TLS 1.2 in the handshake, a TLS failure too). */
        int refused = !conn->received && refuses_client(NULL);
        char reason[200];
        openssl_reason(reason, sizeof reason);
        if (refused) {
            return fail(err, RIO_E_TLS, 0, "TLS %s failed, the server refused this client: %s", what, reason);
        }
        return fail(err, RIO_E_CLOSED, 0, "TLS %s failed: %s", what, reason);
    }
    }
}

/* After a TLS write failed because the server had closed or reset the connection: the server
   may have said why before it closed, in an alert not read yet. A TLS 1.3 server that refuses
   the client's certificate (Redis's default asks for one) does so after the client's side of
   the handshake ended: it sends the alert and closes, and a write that comes after the close
   is reset. One SSL_read (the socket is non-blocking) takes what is queued, classified as any
   read is (tls_failure); a failure that names an alert replaces the write's. OpenSSL's record
   layer leaves the session usable after a failed socket write (it raises no fatal alert for
   one), so the read is valid. What else it reads is dropped with the connection. */
static void alert_before_close(rio_conn *conn, rio_error *err) {
    if (err == NULL || err->code != RIO_E_CLOSED) {
        return;
    }
    char buffer[512];
    rio_error reading = {0};
    empty_error_queue();
    int result = SSL_read(conn->ssl, buffer, (int)sizeof buffer);
    int saved = errno;
    if (result <= 0 && tls_failure(conn, result, saved, NULL, NULL, "read", &reading) != 0 && strstr(reading.message, " alert ") != NULL) {
        if (reading.code == RIO_E_TLS) {
            /* The server refused this client: what the read says is the whole story. */
            fail(err, RIO_E_TLS, err->sys_errno, "%s", reading.message);
        } else {
            fail(err, RIO_E_CLOSED, err->sys_errno, "TLS write failed, and the server closed the connection: %s", reading.message);
        }
    }
}

ssize_t rio_conn_write(rio_conn *conn, const void *bytes, size_t length, int *wants_read, rio_error *err) {
    if (conn == NULL || bytes == NULL) {
        fail(err, RIO_E_INVALID, EINVAL, "no connection");
        return -1;
    }
    if (length == 0) {
        return 0;
    }
    if (conn->ssl != NULL) {
        empty_error_queue();
        int chunk = length > 0x7fffffff ? 0x7fffffff : (int)length;
        int written = SSL_write(conn->ssl, bytes, chunk);
        int saved = errno;
        if (written > 0) {
            return written;
        }
        if (tls_failure(conn, written, saved, wants_read, NULL, "write", err) == 0) {
            return 0;
        }
        alert_before_close(conn, err);
        return -1;
    }
    for (;;) {
        ssize_t written = send(conn->fd, bytes, length, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (written >= 0) {
            return written;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return 0;
        }
        fail_errno(err, "write", errno);
        return -1;
    }
}

static int feed(rio_conn *conn, const char *buffer, size_t count, rio_error *err) {
    conn->received = 1;
    if (redisReaderFeed(conn->reader, buffer, count) != REDIS_OK) {
        return reader_failure(conn, err);
    }
    /* hiredis 0.14 keeps a reply until the whole of it came, with no limit of its own: a peer
       that announces a huge bulk string, or an array of many or large elements (parsed one by
       one, so its bytes leave the buffer while its elements pile up), would make it hold memory
       without end. So the bytes since the last complete reply are counted (replies complete
       but not yet taken are among them: at most one read's worth). */
    conn->since_reply += count;
    if (conn->since_reply > RIO_MAX_UNPARSED_BYTES) {
        return fail(err, RIO_E_BOUND, 0,
                    "protocol error: %zu bytes received without a complete reply (at most %d; the replies this library reads are small)",
                    conn->since_reply, RIO_MAX_UNPARSED_BYTES);
    }
    return RIO_OK;
}

/* A plain connection that the server closed or reset before it sent a single byte (a TLS port
   does that with bytes that are not a handshake; the connect looks for TLS then). Says so in
   err's message. */
static void closed_before_reply(const rio_conn *conn, rio_error *err) {
    if (err == NULL || conn->ssl != NULL || conn->received || err->code != RIO_E_CLOSED) {
        return;
    }
    size_t used = strlen(err->message);
    snprintf(err->message + used, sizeof err->message - used,
             " before any reply");
}

size_t rio_conn_read(rio_conn *conn, int to_eof, int *failed, int *wants_write, rio_error *err) {
    *failed = 0;
    if (conn == NULL) {
        *failed = 1;
        fail(err, RIO_E_INVALID, EINVAL, "no connection");
        return 0;
    }
    char buffer[16384];
    size_t total = 0;
    conn->undrained = 0;
    conn->tls_short_read = 0;
    while (total < (1u << 20)) {
        ssize_t count;
        if (conn->ssl != NULL) {
            empty_error_queue();
            int result = SSL_read(conn->ssl, buffer, (int)sizeof buffer);
            int saved = errno;
            if (result <= 0) {
                if (tls_failure(conn, result, saved, NULL, wants_write, "read", err) != 0) {
                    *failed = 1;
                }
                return total;
            }
            count = result;
        } else {
            count = receive(conn, buffer, sizeof buffer);
            if (count < 0) {
                if (errno == EINTR) {
                    continue;
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    *failed = 1;
                    fail_errno(err, "read", errno);
                    closed_before_reply(conn, err);
                }
                return total;
            }
            if (count == 0) {
                *failed = 1;
                fail(err, RIO_E_CLOSED, 0, "the server closed the connection");
                closed_before_reply(conn, err);
                return total;
            }
        }
        if (feed(conn, buffer, (size_t)count, err) != RIO_OK) {
            *failed = 1;
            return total;
        }
        total += (size_t)count;
        /* A short plain read drained the socket: what comes later (bytes, a FIN) raises a new
           edge-triggered event. A FIN that came with these bytes raised none of its own; the
           event that reported it says hang-up, and then to_eof reads on to see it. Over TLS, a
           short read of the socket by this call drained it likewise once the session holds no
           bytes of its own (read ahead: a whole record or more, not yet returned): else the
           next SSL_read returns them, or reads the rest of a record. */
        if (!to_eof && (conn->ssl == NULL ? (size_t)count < sizeof buffer
                                          : conn->tls_short_read && !SSL_has_pending(conn->ssl))) {
            return total;
        }
    }
    conn->undrained = 1;
    return total;
}

int rio_conn_pending(const rio_conn *conn) {
    if (conn == NULL) {
        return 0;
    }
    return conn->undrained || (conn->ssl != NULL && SSL_pending(conn->ssl) > 0);
}

int rio_conn_reader_empty(const rio_conn *conn) {
    /* Over TLS, OpenSSL may hold bytes of the next record (read ahead) that the last read of
       the socket brought: its arrival is then a bound, never the reply's own. */
    return conn != NULL && conn->ssl == NULL && conn->reader != NULL && conn->reader->pos >= conn->reader->len;
}

int rio_conn_next_reply(rio_conn *conn, rio_reply **out, rio_error *err) {
    *out = NULL;
    void *reply = NULL;
    if (redisReaderGetReply(conn->reader, &reply) != REDIS_OK) {
        if (reply != NULL) {
            freeReplyObject(reply);
        }
        reader_failure(conn, err);
        return -1;
    }
    if (reply == NULL) {
        return 0;
    }
    conn->since_reply = 0;
    conn->reply_elements = 0;
    *out = (rio_reply *)reply;
    return 1;
}

int rio_conn_roundtrip(rio_conn *conn, const void *bytes, size_t length, int timeout_ms, rio_reply **out, rio_error *err) {
    *out = NULL;
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    const char *cursor = bytes;
    size_t left = length;
    while (left > 0) {
        int wants_read = 0;
        ssize_t written = rio_conn_write(conn, cursor, left, &wants_read, err);
        if (written < 0) {
            return err != NULL ? err->code : RIO_E_IO;
        }
        cursor += written;
        left -= (size_t)written;
        if (left > 0) {
            int ready = wait_for(conn->fd, wants_read ? POLLIN : POLLOUT, deadline, err);
            if (ready == 0) {
                return fail(err, RIO_E_TIMEOUT, ETIMEDOUT, "timed out writing to the server");
            }
            if (ready < 0) {
                return err != NULL ? err->code : RIO_E_IO;
            }
        }
    }
    for (;;) {
        int got = rio_conn_next_reply(conn, out, err);
        if (got != 0) {
            return got > 0 ? RIO_OK : (err != NULL ? err->code : RIO_E_PROTOCOL);
        }
        int failed = 0, wants_write = 0;
        size_t read = rio_conn_read(conn, 1, &failed, &wants_write, err);
        if (failed) {
            /* A reply that came before the failure is still the answer; bytes that are not
               RESP before it say more than the close that followed them. */
            rio_error parsing = {0};
            got = rio_conn_next_reply(conn, out, &parsing);
            if (got > 0) {
                return RIO_OK;
            }
            if (got < 0 && err != NULL) {
                *err = parsing;
                return parsing.code;
            }
            return err != NULL ? err->code : RIO_E_IO;
        }
        if (read == 0 && !rio_conn_pending(conn)) {
            int ready = wait_for(conn->fd, wants_write ? POLLOUT : POLLIN, deadline, err);
            if (ready == 0) {
                return fail(err, RIO_E_TIMEOUT, ETIMEDOUT, "timed out waiting for the server's reply");
            }
            if (ready < 0) {
                return err != NULL ? err->code : RIO_E_IO;
            }
        }
    }
}

int rio_conn_peer_closed(rio_conn *conn) {
    if (conn == NULL || conn->fd < 0) {
        return 1;
    }
    char byte;
    ssize_t peeked = recv(conn->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (peeked == 0) {
        return 1;
    }
    if (peeked < 0) {
        return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    }
    if (conn->ssl == NULL) {
        return 0;
    }
    /* Bytes on an idle TLS connection: a session ticket, or the server's close_notify. Let
       OpenSSL process the records without taking application data. */
    ERR_clear_error();
    int result = SSL_peek(conn->ssl, &byte, 1);
    if (result > 0) {
        return 0;
    }
    int reason_code = SSL_get_error(conn->ssl, result);
    ERR_clear_error();
    return reason_code != SSL_ERROR_WANT_READ && reason_code != SSL_ERROR_WANT_WRITE;
}

void rio_conn_shutdown(rio_conn *conn) {
    if (conn != NULL && conn->fd >= 0) {
        (void)shutdown(conn->fd, SHUT_RDWR);
    }
}

void rio_conn_free(rio_conn *conn) {
    if (conn != NULL) {
        conn_release(conn);
    }
}

/* ---- replies ---- */

int rio_reply_type(const rio_reply *reply) {
    return reply != NULL ? ((const redisReply *)reply)->type : 0;
}

long long rio_reply_integer(const rio_reply *reply) {
    return reply != NULL ? ((const redisReply *)reply)->integer : 0;
}

const char *rio_reply_bytes(const rio_reply *reply, size_t *length) {
    *length = 0;
    if (reply == NULL) {
        return NULL;
    }
    const redisReply *r = (const redisReply *)reply;
    if (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS && r->type != REDIS_REPLY_ERROR) {
        return NULL;
    }
    if (r->str == NULL) {
        return NULL;
    }
    *length = r->len;
    return r->str;
}

size_t rio_reply_count(const rio_reply *reply) {
    const redisReply *r = (const redisReply *)reply;
    return r != NULL && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
}

const rio_reply *rio_reply_element(const rio_reply *reply, size_t index) {
    const redisReply *r = (const redisReply *)reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->element == NULL || index >= r->elements) {
        return NULL;
    }
    return (const rio_reply *)r->element[index];
}

void rio_reply_free(rio_reply *reply) {
    if (reply != NULL) {
        freeReplyObject(reply);
    }
}

/* ---- event loop primitives ---- */

int rio_poller_create(rio_error *err) {
    int poller = epoll_create1(EPOLL_CLOEXEC);
    if (poller < 0) {
        fail_errno(err, "epoll_create1", errno);
    }
    return poller;
}

int rio_poller_control(int poller, int op, int fd, int want_write, int edge, uint64_t token, rio_error *err) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = EPOLLIN | EPOLLPRI | EPOLLRDHUP | (want_write ? EPOLLOUT : 0) | (edge ? EPOLLET : 0);
    event.data.u64 = token;
    int operation = op == 0 ? EPOLL_CTL_ADD : op == 1 ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
    if (epoll_ctl(poller, operation, fd, &event) != 0) {
        fail_errno(err, "epoll_ctl", errno);
        return -1;
    }
    return 0;
}

int rio_poller_wait(int poller, rio_event *events, int capacity, int timeout_ms, rio_error *err) {
    struct epoll_event ready[64];
    int limit = capacity < 64 ? capacity : 64;
    int count = epoll_wait(poller, ready, limit, timeout_ms);
    if (count < 0) {
        if (errno == EINTR) {
            return 0;
        }
        fail_errno(err, "epoll_wait", errno);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        events[i].token = ready[i].data.u64;
        events[i].readable = (ready[i].events & (EPOLLIN | EPOLLPRI)) != 0;
        events[i].writable = (ready[i].events & EPOLLOUT) != 0;
        events[i].hangup = (ready[i].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) != 0;
        events[i].urgent = (ready[i].events & EPOLLPRI) != 0;
    }
    return count;
}

int rio_waker_create(rio_error *err) {
    int waker = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (waker < 0) {
        fail_errno(err, "eventfd", errno);
    }
    return waker;
}

void rio_waker_signal(int waker) {
    uint64_t one = 1;
    /* A full counter (EAGAIN) still leaves the waker readable: the wake-up is not lost. */
    while (write(waker, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

void rio_waker_drain(int waker) {
    uint64_t count;
    while (read(waker, &count, sizeof count) < 0 && errno == EINTR) {
    }
}

void rio_close_descriptor(int fd) {
    if (fd >= 0) {
        close(fd);
    }
}

size_t rio_random_bytes(void *buffer, size_t length) {
    if (buffer == NULL || length == 0) {
        return 0;
    }
    ssize_t got = getrandom(buffer, length, 0);
    if (got <= 0) {
        return 0;
    }
    return (size_t)got < length ? (size_t)got : length;
}

int rio_openssl_leave_error(void) {
    ERR_raise(ERR_LIB_SSL, ERR_R_INTERNAL_ERROR);
    return ERR_peek_error() != 0 ? 1 : 0;
}

int64_t rio_conn_arrival_realtime_ns(const rio_conn *conn) {
    return conn != NULL ? conn->arrival_realtime_ns : 0;
}

/* The times of the reply being delivered on this thread (rio_set_delivery). Initial-exec: one
   load off the thread pointer rather than a __tls_get_addr call per access (the 32 bytes fit
   the static TLS space glibc keeps for modules loaded later). */
static _Thread_local rio_delivery delivering __attribute__((tls_model("initial-exec"))) = {0, 0, 0, 0};

void rio_set_delivery(rio_delivery next) {
    delivering = next;
}

int rio_delivery_times(int64_t *arrival_boottime_ns, int64_t *held_ns, int *exact) {
    rio_delivery now_delivering = delivering;
    struct timespec real, boot;
    if (arrival_boottime_ns == NULL || held_ns == NULL || exact == NULL || now_delivering.arrival_realtime_ns <= 0
        || clock_gettime(CLOCK_REALTIME, &real) != 0 || clock_gettime(CLOCK_BOOTTIME, &boot) != 0) {
        return 0;
    }
    int64_t real_now = (int64_t)real.tv_sec * 1000000000 + (int64_t)real.tv_nsec;
    int64_t boot_now = (int64_t)boot.tv_sec * 1000000000 + (int64_t)boot.tv_nsec;
    int64_t queued = real_now - now_delivering.arrival_realtime_ns;
    if (queued < 0) {
        /* The wall clock was stepped back since: the arrival cannot be placed. */
        return 0;
    }
    *arrival_boottime_ns = boot_now - queued;
    *held_ns = now_delivering.released_realtime_ns < 0 ? -1 : 0;
    if (now_delivering.released_realtime_ns > 0 && now_delivering.written_boottime_ns > 0) {
        int64_t released_boottime = boot_now - (real_now - now_delivering.released_realtime_ns);
        int64_t held = now_delivering.written_boottime_ns - released_boottime;
        *held_ns = held > 0 ? held : 0;
    }
    *exact = now_delivering.exact;
    return 1;
}
