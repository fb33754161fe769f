/*
 * The CPU burner behind the flamegraph golden test (probe-user/tests/flamegraph_golden.rs):
 * no libc, a few seconds of pure user-mode CPU in _start -> outer -> middle -> inner, then a
 * raw exit syscall. Built without frame pointers, so only .eh_frame unwinds it:
 *
 *   gcc -O1 -g0 -fasynchronous-unwind-tables -fomit-frame-pointer -fno-stack-protector \
 *       -nostdlib -static -no-pie -Wl,--build-id=none -Wl,--eh-frame-hdr -o spin spin.c
 *
 * (no build-id: the flame stage never looks for a debug file of it.)
 */

#define OUTER_ROUNDS 6
#define SPIN_UNIT 150000000UL

static volatile unsigned long sink;


/* inline for the loops: each function's own samples land in its own body. */
#define BURN(n)                                                                                    \
    do {                                                                                           \
        for (unsigned long i = 0; i < (n); i++) sink += i;                                         \
    } while (0)

void __attribute__((noinline)) inner(void) { BURN(6 * SPIN_UNIT); }

void __attribute__((noinline)) middle(void) {
    BURN(2 * SPIN_UNIT);
    inner();
}

void __attribute__((noinline)) outer(void) {
    for (int r = 0; r < OUTER_ROUNDS; r++) {
        BURN(SPIN_UNIT);
        middle();
    }
}

/* The entry: the CFI marks the return address undefined, the end of the stack for unwinders. */
__asm__(".text\n"
        ".globl _start\n"
        ".type _start, @function\n"
        "_start:\n"
        ".cfi_startproc\n"
        ".cfi_undefined rip\n"
        "    xor %ebp, %ebp\n"
        "    and $-16, %rsp\n"
        "    call outer\n"
        "    xor %edi, %edi\n"
        "    mov $60, %eax\n" /* SYS_exit */
        "    syscall\n"
        "    hlt\n"
        ".cfi_endproc\n"
        ".size _start, .-_start\n");
