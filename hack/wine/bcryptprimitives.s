# bcryptprimitives.dll for Wine < 8.13, which lacks it: Go's Windows runtime
# (Go 1.24 and later) needs ProcessPrng from it before main runs. ProcessPrng
# fills the buffer with advapi32's SystemFunction036 (RtlGenRandom) and
# widens its BOOLEAN result to the BOOL that Go's callers test as a whole
# register. Built and installed into the wine
# prefix by hack/wine-test.sh; never shipped with tp.
	.text
	.globl	ProcessPrng
ProcessPrng:			# BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData)
	subq	$40, %rsp		# shadow space + alignment
	call	*__imp_SystemFunction036(%rip)	# (rcx, edx) are already the arguments
	addq	$40, %rsp
	movzbl	%al, %eax
	ret

	.globl	DllMain
DllMain:
	movl	$1, %eax
	ret
