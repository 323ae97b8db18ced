/* A tiny static probe for the security tests: calls the named system calls with harmless arguments and
 * prints "name=errno" (0 when the call succeeded); "nr:N" calls system call number N. busybox has no applet
 * for these calls. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *n = argv[i];
        long r = -1;
        errno = 0;
        if (!strcmp(n, "keyctl"))            /* KEYCTL_GET_KEYRING_ID of the session keyring, no create */
            r = syscall(SYS_keyctl, 0, -3, 0);
        else if (!strcmp(n, "add_key"))      /* a user key in the process keyring */
            r = syscall(SYS_add_key, "user", "runner-probe", "x", 1, -2);
        else if (!strcmp(n, "bpf"))          /* BPF_MAP_CREATE with no attributes */
            r = syscall(SYS_bpf, 0, NULL, 0);
        else if (!strcmp(n, "unshare_user"))
            r = syscall(SYS_unshare, CLONE_NEWUSER);
        else if (!strcmp(n, "userfaultfd"))
            r = syscall(SYS_userfaultfd, 0);
        else if (!strcmp(n, "personality"))  /* query only */
            r = syscall(SYS_personality, 0xffffffffUL);
        else if (!strncmp(n, "nr:", 3))    /* a raw system call number, no arguments (unknown ones: ENOSYS) */
            r = syscall(atol(n + 3), 0, 0, 0, 0, 0, 0);
        else {
            fprintf(stderr, "unknown probe %s\n", n);
            return 2;
        }
        printf("%s=%d\n", n, r < 0 ? errno : 0);
    }
    return 0;
}
