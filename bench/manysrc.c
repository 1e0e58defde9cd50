/* manysrc: a DNS load generator sending from many loopback source addresses (bench/manysrc.py
 * builds it with gcc and runs it; see bench/README.md "Many sources").
 *
 * One UDP socket bound to 0.0.0.0:port; every query leaves with its own source address, chosen per
 * query from N consecutive addresses, set per message with IP_PKTINFO (ipi_spec_dst) in one sendmmsg
 * call per batch. All of 127.0.0.0/8 is local, so the answers to every address come back to the same
 * socket (recvmmsg). At most OUTSTANDING queries are in flight (closed loop, as dnsperf -q); a query
 * unanswered after TIMEOUT_S counts as lost. Bounded: stops sending after SECONDS, waits at most
 * 1 s for the last answers, then prints a summary in dnsperf's wording (bench reads it with the
 * same parser).
 *
 *   manysrc SERVER_IP PORT QUERY_FILE FIRST_SOURCE N_SOURCES SECONDS OUTSTANDING
 *
 * QUERY_FILE: DNS messages, each after a 2-byte big-endian length; their IDs are replaced. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_MSG 512
#define TIMEOUT_S 1.0
#define MAX_SECONDS 600.0
#define SLOTS 65536

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_random(void) { /* xorshift64*: the source of each query, reproducible */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: manysrc SERVER_IP PORT QUERY_FILE FIRST_SOURCE N_SOURCES SECONDS OUTSTANDING\n");
        return 2;
    }
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    struct in_addr first;
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1 || inet_pton(AF_INET, argv[4], &first) != 1) {
        fprintf(stderr, "manysrc: bad address\n");
        return 2;
    }
    long nsources = atol(argv[5]);
    double seconds = atof(argv[6]);
    long outstanding_max = atol(argv[7]);
    if (nsources < 1 || nsources > 65536 || seconds <= 0 || seconds > MAX_SECONDS || outstanding_max < 1 ||
        outstanding_max > 30000) {
        fprintf(stderr, "manysrc: N_SOURCES 1..65536, SECONDS 0..600, OUTSTANDING 1..30000\n");
        return 2;
    }

    /* the query file */
    FILE *f = fopen(argv[3], "rb");
    if (!f) { perror("manysrc: query file"); return 2; }
    size_t cap = 1024, nq = 0;
    unsigned char (*msgs)[MAX_MSG] = malloc(cap * MAX_MSG);
    uint16_t *lens = malloc(cap * sizeof *lens);
    unsigned char lenbuf[2];
    while (fread(lenbuf, 1, 2, f) == 2) {
        uint16_t len = (uint16_t)(lenbuf[0] << 8 | lenbuf[1]);
        if (len < 12 || len > MAX_MSG) { fprintf(stderr, "manysrc: bad message length %u\n", len); return 2; }
        if (nq == cap) {
            cap *= 2;
            msgs = realloc(msgs, cap * MAX_MSG);
            lens = realloc(lens, cap * sizeof *lens);
        }
        if (fread(msgs[nq], 1, len, f) != len) { fprintf(stderr, "manysrc: short message\n"); return 2; }
        lens[nq++] = len;
    }
    fclose(f);
    if (nq == 0) { fprintf(stderr, "manysrc: no queries\n"); return 2; }

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("manysrc: socket"); return 2; }
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&any, sizeof any) < 0) { perror("manysrc: bind"); return 2; }

    static double sent_at[SLOTS];  /* by query ID: when it was sent, 0 when not in flight */
    uint32_t first_host = ntohl(first.s_addr);
    unsigned char out_buf[BATCH][MAX_MSG];
    char ctl[BATCH][CMSG_SPACE(sizeof(struct in_pktinfo))];
    struct iovec out_iov[BATCH], in_iov[BATCH];
    struct mmsghdr out_msgs[BATCH], in_msgs[BATCH];
    unsigned char in_buf[BATCH][1500];
    for (int i = 0; i < BATCH; i++) {
        in_iov[i] = (struct iovec){.iov_base = in_buf[i], .iov_len = sizeof in_buf[i]};
        in_msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &in_iov[i], .msg_iovlen = 1}};
    }

    uint64_t sent = 0, completed = 0, lost = 0, rcodes[16] = {0};
    double latency_sum = 0, latency_min = 1e9, latency_max = 0;
    long in_flight = 0;
    uint32_t next_id = 0, query_index = 0;
    double start = now_s(), stop_sending = start + seconds, last_sweep = start, end;
    for (;;) {
        double now = now_s();
        int sending = now < stop_sending;
        if (!sending && (in_flight == 0 || now > stop_sending + TIMEOUT_S)) { end = now; break; }
        /* send up to a batch while below the outstanding limit */
        int n = 0;
        while (sending && n < BATCH && in_flight + n < outstanding_max) {
            uint32_t id = next_id;
            int tries = 0;
            while (sent_at[id] != 0 && tries++ < SLOTS) id = (id + 1) & 0xFFFF;
            if (sent_at[id] != 0) break;
            next_id = (id + 1) & 0xFFFF;
            memcpy(out_buf[n], msgs[query_index], lens[query_index]);
            out_buf[n][0] = id >> 8;
            out_buf[n][1] = id & 0xFF;
            out_iov[n] = (struct iovec){.iov_base = out_buf[n], .iov_len = lens[query_index]};
            query_index = (query_index + 1) % nq;
            memset(ctl[n], 0, sizeof ctl[n]);
            out_msgs[n] = (struct mmsghdr){.msg_hdr = {.msg_name = &server, .msg_namelen = sizeof server,
                                                       .msg_iov = &out_iov[n], .msg_iovlen = 1,
                                                       .msg_control = ctl[n], .msg_controllen = sizeof ctl[n]}};
            struct cmsghdr *c = CMSG_FIRSTHDR(&out_msgs[n].msg_hdr);
            c->cmsg_level = IPPROTO_IP;
            c->cmsg_type = IP_PKTINFO;
            c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
            struct in_pktinfo *info = (struct in_pktinfo *)CMSG_DATA(c);
            info->ipi_spec_dst.s_addr = htonl(first_host + (uint32_t)(next_random() % (uint64_t)nsources));
            sent_at[id] = now;
            n++;
        }
        if (n > 0) {
            int done = sendmmsg(fd, out_msgs, n, 0);
            if (done < 0) done = 0;
            for (int i = done; i < n; i++) {  /* not sent (buffer full): free their slots */
                unsigned char *b = out_buf[i];
                sent_at[b[0] << 8 | b[1]] = 0;
            }
            sent += done;
            in_flight += done;
        }
        /* wait for answers when nothing more may be sent now */
        if (!sending || in_flight >= outstanding_max || n == 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, 1);
        }
        for (;;) {
            for (int i = 0; i < BATCH; i++) in_msgs[i].msg_hdr.msg_flags = 0;
            int got = recvmmsg(fd, in_msgs, BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0) break;
            double t = now_s();
            for (int i = 0; i < got; i++) {
                unsigned char *b = in_buf[i];
                if (in_msgs[i].msg_len < 12) continue;
                uint16_t id = (uint16_t)(b[0] << 8 | b[1]);
                if (sent_at[id] == 0) continue;  /* late (counted lost) or not ours */
                double lat = t - sent_at[id];
                sent_at[id] = 0;
                in_flight--;
                completed++;
                rcodes[b[3] & 0x0F]++;
                latency_sum += lat;
                if (lat < latency_min) latency_min = lat;
                if (lat > latency_max) latency_max = lat;
            }
            if (got < BATCH) break;
        }
        now = now_s();
        if (now - last_sweep > 0.05) {  /* unanswered for TIMEOUT_S: lost */
            last_sweep = now;
            for (int id = 0; id < SLOTS; id++) {
                if (sent_at[id] != 0 && now - sent_at[id] > TIMEOUT_S) {
                    sent_at[id] = 0;
                    in_flight--;
                    lost++;
                }
            }
        }
    }
    double run_time = end - start;
    double sending_time = stop_sending < end ? seconds : run_time;
    printf("[Status] manysrc: %ld sources from %s\n", nsources, argv[4]);
    printf("  Queries sent:         %llu\n", (unsigned long long)sent);
    printf("  Queries completed:    %llu\n", (unsigned long long)completed);
    printf("  Queries lost:         %llu\n", (unsigned long long)(lost + (uint64_t)in_flight));
    static const char *names[16] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"};
    printf("  Response codes:       ");
    int listed = 0;
    for (int i = 0; i < 16; i++) {
        if (!rcodes[i]) continue;
        if (names[i]) printf("%s%s %llu", listed++ ? ", " : "", names[i], (unsigned long long)rcodes[i]);
        else printf("%sRCODE%d %llu", listed++ ? ", " : "", i, (unsigned long long)rcodes[i]);
    }
    printf("\n");
    printf("  Run time (s):         %.6f\n", run_time);
    printf("  Queries per second:   %.6f\n", completed / sending_time);
    printf("  Average Latency (s):  %.6f (min %.6f, max %.6f)\n", completed ? latency_sum / completed : 0,
           completed ? latency_min : 0, latency_max);
    return 0;
}
