package com.example.bank;

import java.math.BigDecimal;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.atomic.AtomicLong;

/** A tiny in-memory bank: opens accounts, finds them, and moves money between them. */
public class Bank {

    private final Map<String, BankAccount> accounts = new LinkedHashMap<>();
    private final AtomicLong nextId = new AtomicLong(1000);

    public BankAccount openAccount(String owner, BigDecimal initialDeposit) {
        String id = "ACC-" + nextId.getAndIncrement();
        BankAccount account = new BankAccount(id, owner);
        if (initialDeposit != null && initialDeposit.signum() > 0) {
            account.deposit(initialDeposit);
        }
        accounts.put(id, account);
        return account;
    }

    public Optional<BankAccount> find(String id) {
        return Optional.ofNullable(accounts.get(id));
    }

    public void transfer(String fromId, String toId, BigDecimal amount) throws InsufficientFundsException {
        BankAccount from = find(fromId).orElseThrow(() -> new IllegalArgumentException("no account " + fromId));
        BankAccount to = find(toId).orElseThrow(() -> new IllegalArgumentException("no account " + toId));
        from.transferTo(to, amount);
    }

    public BigDecimal totalDeposits() {
        BigDecimal total = BigDecimal.ZERO;
        for (BankAccount account : accounts.values()) {
            total = total.add(account.getBalance());
        }
        return total;
    }

    public static void main(String[] args) throws InsufficientFundsException {
        Bank bank = new Bank();
        BankAccount alice = bank.openAccount("Alice", new BigDecimal("250.00"));
        BankAccount bob = bank.openAccount("Bob", BigDecimal.ZERO);
        bank.transfer(alice.getId(), bob.getId(), new BigDecimal("75.50"));
        alice.applyMonthlyInterest(new BigDecimal("0.03"));
        for (Transaction t : alice.getHistory()) {
            System.out.println(t);
        }
        System.out.println("Total held by the bank: " + bank.totalDeposits());
    }
}
