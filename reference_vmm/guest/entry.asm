; Entry points of the vmtrace benchmark guest (NASM, ELF32).
;
;   _start         the BSP, entered by a multiboot (v1) loader in 32-bit
;                  protected mode: EAX = 0x2BADB002, EBX = multiboot info,
;                  flat segments, paging off, interrupts off.
;   ap_start32     an AP, entered from the real-mode trampoline (see
;                  trampoline.asm) in 32-bit protected mode with its own stack.
;
; Both load the guest's own flat GDT before running C, so nothing depends on
; the GDT the loader or the trampoline left behind.

MB_MAGIC        equ 0x1BADB002
MB_FLAGS        equ 0               ; ELF image: no a.out kludge, no video, no memory map needed
MB_CHECKSUM     equ -(MB_MAGIC + MB_FLAGS)

BSP_STACK_SIZE  equ 16384

SEL_CODE        equ 0x08
SEL_DATA        equ 0x10

extern kmain
extern ap_main
extern __bss_start
extern __bss_end

global _start
global ap_start32
global trampoline_blob
global trampoline_blob_end

section .multiboot
align 4
        dd MB_MAGIC
        dd MB_FLAGS
        dd MB_CHECKSUM

section .text
bits 32

_start:
        cli
        cld
        lgdt    [gdt_desc]
        jmp     SEL_CODE:.reload_cs
.reload_cs:
        mov     cx, SEL_DATA
        mov     ds, cx
        mov     es, cx
        mov     fs, cx
        mov     gs, cx
        mov     ss, cx
        mov     esp, bsp_stack_top

        ; Zero .bss ourselves rather than trust every loader to do it.
        ; EAX and EBX (multiboot magic and info) are preserved.
        mov     edi, __bss_start
        mov     ecx, __bss_end
        sub     ecx, edi
        shr     ecx, 2
        mov     edx, eax
        xor     eax, eax
        rep stosd
        mov     eax, edx
        mov     esp, bsp_stack_top          ; the stack was in .bss

        push    ebx                         ; multiboot info (physical address)
        push    eax                         ; multiboot magic
        call    kmain
.halt:
        cli
        hlt
        jmp     .halt

; Reached from the trampoline with ESP set to this AP's stack top.
ap_start32:
        cli
        cld
        lgdt    [gdt_desc]
        jmp     SEL_CODE:.reload_cs
.reload_cs:
        mov     cx, SEL_DATA
        mov     ds, cx
        mov     es, cx
        mov     fs, cx
        mov     gs, cx
        mov     ss, cx
        call    ap_main
.halt:
        cli
        hlt
        jmp     .halt

section .rodata
align 16
; Flat 4 GiB code and data segments, the same layout the trampoline uses.
gdt:
        dq 0                                ; null
        dq 0x00CF9A000000FFFF               ; 0x08: code, base 0, limit 4 GiB, 32-bit
        dq 0x00CF92000000FFFF               ; 0x10: data, base 0, limit 4 GiB
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt

; The AP trampoline, assembled separately as a flat binary for its load
; address and copied below 1 MiB by the BSP (smp.c).
align 16
trampoline_blob:
        incbin  TRAMPOLINE_BIN
trampoline_blob_end:

section .bss
align 16
bsp_stack:
        resb BSP_STACK_SIZE
bsp_stack_top:
