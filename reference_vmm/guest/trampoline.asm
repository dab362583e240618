; AP start-up trampoline of the vmtrace benchmark guest (NASM, flat binary).
;
; The BSP copies this blob to TRAMP_BASE (a page below 1 MiB), fills in the
; parameter block, and sends INIT, SIPI, SIPI with vector TRAMP_BASE >> 12.
; Each AP starts here in real mode at CS:IP = (TRAMP_BASE >> 4):0000, loads a
; flat GDT, enters 32-bit protected mode, takes the next free stack slot with
; an atomic add, and jumps to the kernel's ap_start32 with ESP at the top of
; that stack.
;
; The parameter block layout is mirrored by struct tramp_params in smp.c;
; keep the two in step.

%ifndef TRAMP_BASE
%define TRAMP_BASE 0x8000
%endif

SEL_CODE        equ 0x08
SEL_DATA        equ 0x10

bits 16
org TRAMP_BASE

tramp_start:
        jmp     short real_mode_entry
        align   8, db 0
; ---- parameter block (offset 8), written by the BSP -------------------------
params:
p_entry:        dd 0            ; +8   32-bit entry point (ap_start32)
p_stacks:       dd 0            ; +12  base of the AP stack array
p_stack_size:   dd 0            ; +16  bytes per AP stack
p_next_slot:    dd 0            ; +20  next free stack slot (atomic counter)
p_max_slots:    dd 0            ; +24  number of stack slots
; -----------------------------------------------------------------------------

real_mode_entry:
        cli
        cld
        xor     ax, ax
        mov     ds, ax                  ; addresses below are absolute (org)
        o32 lgdt [tramp_gdt_desc]
        mov     eax, cr0
        or      eax, 1                  ; PE
        mov     cr0, eax
        jmp     dword SEL_CODE:pm_entry

bits 32
pm_entry:
        mov     ax, SEL_DATA
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     gs, ax
        mov     ss, ax

        mov     eax, 1
        lock xadd [p_next_slot], eax    ; EAX = this AP's slot
        cmp     eax, [p_max_slots]
        jae     no_slot

        inc     eax
        imul    eax, [p_stack_size]
        add     eax, [p_stacks]
        mov     esp, eax                ; top of stack slot
        jmp     [p_entry]

no_slot:                                ; more APs than stacks: park
        cli
        hlt
        jmp     no_slot

align 8
tramp_gdt:
        dq 0
        dq 0x00CF9A000000FFFF           ; 0x08: flat 32-bit code
        dq 0x00CF92000000FFFF           ; 0x10: flat data
tramp_gdt_end:
tramp_gdt_desc:
        dw tramp_gdt_end - tramp_gdt - 1
        dd tramp_gdt
